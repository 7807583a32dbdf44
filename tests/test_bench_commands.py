"""Every command line a bench driver runs composes for its command and fits its schema.

The drivers are run with `subprocess.run` replaced by a recorder (bench_online, bench_chain_online:
their whole run grid; bench_scaleout: its torchrun line), or asked for their argv (bench_search: every
setting, both backends, the --methods/--seeds/--betas variants), so a renamed key in a driver fails here
instead of minutes into a benchmark."""
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.test_commands import COMMANDS, compose_and_validate


def command_words(argv: list[str]) -> tuple[str, list[str]]:
    """(command, override words) of an argv that runs `-m <command>` (behind torchrun or not)."""
    starts = [i for i, word in enumerate(argv[:-1]) if word == "-m" and argv[i + 1] in COMMANDS]
    assert starts, f"no command of {sorted(COMMANDS)} in {argv}"
    rest, words = argv[starts[-1] + 2:], []
    while rest:
        word = rest.pop(0)
        words.append(f"--config-name={rest.pop(0)}" if word in ("--config-name", "-cn") else word)
    return argv[starts[-1] + 1], words


@pytest.fixture
def recorded(monkeypatch):
    calls = []

    def run(cmd, *args, **kwargs):
        calls.append([str(c) for c in cmd])
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(subprocess, "run", run)
    return calls


def grid_args(tmp_path, module) -> SimpleNamespace:
    return SimpleNamespace(out=str(tmp_path), seeds=[0, 1], rounds=2, budget=16, jobs=1,
                           modes=list(getattr(module, "MODES", [])), arms=list(getattr(module, "ARMS", [])))


def driver_commands(tmp_path, recorded) -> list[tuple[str, list[str]]]:
    from bench import bench_chain_online, bench_online, bench_scaleout, bench_search

    for module in (bench_online, bench_chain_online):
        module.run_all(grid_args(tmp_path / module.__name__, module), [])
    with pytest.raises(FileNotFoundError):   # it reads the run's metrics after its (recorded) run
        bench_scaleout.run(2, SimpleNamespace(rounds=3, prompts=8, n=4, max_new_tokens=32), tmp_path / "scaleout")
    argvs = list(recorded)
    for name in bench_search.SETTINGS:
        for backend in ("vllm", "hf"):
            argvs.append(bench_search.command(name, "outputs/prm", backend, [])[1])
        argvs.append(bench_search.command(name, None, "vllm", ["scorer.aggregate=min"], seeds="1",
                                          methods="best_of_n,beam", betas="0.0")[1])
    return [command_words(argv) for argv in argvs]


def test_every_bench_driver_command_composes(tmp_path, recorded):
    from bench import bench_chain_online, bench_online

    commands = driver_commands(tmp_path, recorded)
    grid = 2 * (len(bench_online.MODES) + len(bench_chain_online.ARMS))   # 2 seeds x every mode / arm
    assert len(recorded) == grid + 1 and {module for module, _ in commands} == {"rl.online", "rl.search"}
    for module, words in commands:
        try:
            compose_and_validate(module, words)
        except Exception as err:
            raise AssertionError(f"python -m {module} {' '.join(words)}: {err}") from err


def test_a_renamed_key_in_a_driver_would_fail(tmp_path, recorded, monkeypatch):
    """The check bites: a driver passing an old key (a top-level `ledger=`) is caught."""
    from bench import bench_online

    monkeypatch.setattr(bench_online, "SMALL", [*bench_online.SMALL, "ledger=x.sqlite"])
    bench_online.run_all(grid_args(tmp_path, bench_online), [])
    module, words = command_words(recorded[0])
    with pytest.raises(Exception, match="ledger"):
        compose_and_validate(module, words)


def test_round_phase_bench_commands_compose(tmp_path, monkeypatch):
    """bench_round_phases: every arm's command, on this checkout and a --before one (its PYTHONPATH first),
    composes; the table is read back from the runs' metrics."""
    import json

    from bench import bench_round_phases

    seen = []

    def run(cmd, *args, cwd=None, env=None, **kwargs):
        seen.append(([str(c) for c in cmd], cwd, env["PYTHONPATH"].split(":")[0]))
        out = Path(next(c for c in cmd if c.startswith("trainer.out_dir=")).split("=", 1)[1])
        rows = [{"round": r, "timing/prm_update": 1.0 + r, "timing/generate": 2.0} for r in (1, 2, 3)]
        (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in rows))
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(subprocess, "run", run)
    before = tmp_path / "before"
    bench_round_phases.main(["--rounds", "3", "--before", str(before), "--out", str(tmp_path / "out"), "--", "task.seed=1"])
    assert len(seen) == 2 * len(bench_round_phases.ARMS)
    assert {(str(cwd), path) for _, cwd, path in seen} == {(str(before), str(before)),
                                                          (str(bench_round_phases.REPO),) * 2}
    for argv, _, _ in seen:
        module, words = command_words(argv)
        compose_and_validate(module, words)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| **prm_update** | 3.50 | 3.50 | 3.50 | 3.50 | 1.00x |" in table   # rounds 2-3: (3 + 4) / 2
