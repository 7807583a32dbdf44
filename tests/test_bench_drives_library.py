"""bench/ only drives the library: its scripts run as `python -m bench.<name>` without touching sys.path,
import no private name of the library, and every documented bench command names a module that exists."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))
LIBRARY = ("core", "tasks", "judges", "prm", "rl")
DOCUMENTS = [ROOT / "README.md", ROOT / "bench" / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "bench").glob("*.md")), *SCRIPTS]


def private_library_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARY:
            found += [f"from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [m for m in modules if m.split(".")[0] in LIBRARY and any(p.startswith("_") and p != "__init__"
                                                                              for p in m.split(".")[1:])]
    return found


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_a_bench_script_patches_no_path_and_imports_nothing_private(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    touches = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "path"
               and isinstance(n.value, ast.Name) and n.value.id == "sys"]
    assert not touches, f"{path.name}:{touches[0]}: sys.path is changed; run it as python -m bench.{path.stem}"
    assert not private_library_imports(tree), f"{path.name}: {private_library_imports(tree)}"
    siblings = {p.stem for p in SCRIPTS}
    bare = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module in siblings]
    assert not bare, f"{path.name}:{bare[0]}: a sibling imported as a top-level module; use `from bench.<name> import`"


def test_documented_bench_commands_run_as_modules():
    stale, missing = [], []
    for doc in DOCUMENTS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{doc.relative_to(ROOT)}:{number}"
            if re.search(r"python3? bench/\w+\.py", line):
                stale.append(where)
            missing += [f"{where} bench.{m}" for m in re.findall(r"-m bench\.([\w.]+)", line)
                        if not (ROOT / "bench" / f"{m.replace('.', '/')}.py").is_file()]
    assert not stale, f"run bench scripts as `python -m bench.<name>`: {stale[:10]}"
    assert not missing, f"no such bench module: {missing[:10]}"


def test_the_check_finds_a_private_import():
    assert private_library_imports(ast.parse("from rl.rollout import _InverseCDFSample")) == \
        ["from rl.rollout import _InverseCDFSample"]
    assert private_library_imports(ast.parse("from rl.rollout import HFRollout")) == []
