"""The run grid shared by the online benchmarks: one `python -m rl.online` process per (arm, seed), each in
<out>/<arm>_s<seed> with trainer.resume=auto, skipped once its metrics hold every round (a killed bench
continues where it stopped)."""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable


def run_dir(root: str | Path, arm: str, seed: int) -> Path:
    return Path(root) / f"{arm}_s{seed}"


def load(out: Path) -> list[dict]:
    """The per-round metrics a run has written so far ([] before its first round)."""
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def rounds_done(out: Path) -> int:
    """Training rounds logged (the round-0 record of a policy evaluation before training is not one)."""
    return sum(1 for m in load(out) if m.get("round", 0) >= 1)


def run_grid(root: str | Path, seeds, arms, rounds: int, overrides: Callable[[str, int, Path], list[str]],
             cwd: Path | None = None, jobs: int = 1) -> None:
    """For each seed, then arm: `python -m rl.online <overrides(arm, seed, out)>` unless already complete;
    `jobs` runs at a time (each a single-threaded process when OMP_NUM_THREADS=1)."""
    todo = [(arm, seed) for seed in seeds for arm in arms if rounds_done(run_dir(root, arm, seed)) < rounds]

    def one(arm_seed) -> None:
        out = run_dir(root, *arm_seed)
        cmd = [sys.executable, "-m", "rl.online", *overrides(*arm_seed, out)]
        print("$", " ".join(cmd), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "run.log").open("a") as log:
            subprocess.run(cmd, check=True, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, todo))
