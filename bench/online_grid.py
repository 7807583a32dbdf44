"""The run grid shared by the online benchmarks: one `python -m rl.online` process per (arm, seed), each in
<out>/<arm>_s<seed> with trainer.resume=auto, skipped once its metrics hold every round (a killed bench
continues where it stopped)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable


def run_dir(root: str | Path, arm: str, seed: int) -> Path:
    return Path(root) / f"{arm}_s{seed}"


def load(out: Path) -> list[dict]:
    """The per-round metrics a run has written so far ([] before its first round)."""
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def run_grid(root: str | Path, seeds, arms, rounds: int, overrides: Callable[[str, int, Path], list[str]],
             cwd: Path | None = None) -> None:
    """For each seed, then arm: `python -m rl.online <overrides(arm, seed, out)>` unless already complete."""
    for seed in seeds:
        for arm in arms:
            out = run_dir(root, arm, seed)
            done = out / "metrics.jsonl"
            if done.is_file() and len(done.read_text().splitlines()) >= rounds:
                continue
            cmd = [sys.executable, "-m", "rl.online", *overrides(arm, seed, out)]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=cwd)
