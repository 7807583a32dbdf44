"""The air-gapped install: a fresh venv that sees only what a GPU node brings (torch, transformers, vllm and
what only they need, linked in from this environment) installs prmloop from the wheelhouse alone
(`pip install --no-index --find-links`) and imports every command module from the installed package."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("rl.online", "prm.train", "prm.eval", "rl.search", "judges.eval", "rl.plan")
UNREACHABLE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
               "No matching distribution found", "Could not find a version")


def closure() -> dict[str, str]:
    import importlib.util
    spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "bench" / "wheelhouse.py")
    wheelhouse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wheelhouse)
    return wheelhouse.closure()


def pip(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pip", "-q", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=480, check=False)


def wheelhouse(tmp: Path, needed: dict[str, str]) -> Path:
    """`make wheelhouse`'s output where it is present, else the same wheels downloaded/built into tmp."""
    made = ROOT / "wheelhouse"
    if (made / "requirements.txt").is_file() and list(made.glob("prmloop-*.whl")):
        return made
    tmp.mkdir()
    (tmp / "requirements.txt").write_text("".join(f"{n}=={v}\n" for n, v in needed.items()))
    got = pip("wheel", "--no-deps", "-w", str(tmp), "-r", str(tmp / "requirements.txt"))
    if got.returncode and any(s in got.stdout + got.stderr for s in UNREACHABLE):
        pytest.skip(f"the package index is unreachable, no wheelhouse to build: {got.stderr.strip()[-300:]}")
    assert got.returncode == 0, got.stderr[-3000:]
    # prmloop's own wheel, built from a copy: the build leaves build/ and *.egg-info where it runs
    source = tmp.parent / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "wheelhouse", "outputs", "runs", "bench",
                                                                "tests", "build", "*.egg-info", "__pycache__"))
    built = pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(source))
    assert built.returncode == 0, built.stderr[-3000:]
    return tmp


def what_the_node_brings(into: Path, needed: dict[str, str]) -> Path:
    """Link every distribution of this environment that the wheelhouse does not carry (torch, transformers, vllm
    and their own dependencies) into one directory: the node's preinstalled packages."""
    from packaging.utils import canonicalize_name
    into.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in needed or name in ("prmloop", "pip") or not dist.files:
            continue
        for top in {f.parts[0] for f in dist.files if f.parts[0] not in ("..", "__pycache__")}:
            if (site / top).exists() and not (into / top).exists():
                (into / top).symlink_to(site / top)
    return into


@pytest.mark.slow
def test_wheelhouse_installs_with_no_index_and_every_command_imports(tmp_path):
    needed = closure()
    house = wheelhouse(tmp_path / "wheelhouse", needed)
    node = what_the_node_brings(tmp_path / "node_site", needed)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "gpu_node.pth").write_text(f"{node}\n")
    assert pip("show", "hydra-core", python=python).returncode != 0     # the wheelhouse must bring it

    got = pip("install", "--no-index", "--find-links", str(house), "-r", str(house / "requirements.txt"), "prmloop",
              python=python)
    assert got.returncode == 0, got.stderr[-3000:]
    imported = subprocess.run([python, "-c", "import importlib, sys\n"
                               f"for m in {COMMANDS!r}: print(importlib.import_module(m).__file__)"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert imported.returncode == 0, imported.stderr[-3000:]
    files = imported.stdout.split()
    assert len(files) == len(COMMANDS) and all(f.startswith(purelib) for f in files), files   # the installed copy
