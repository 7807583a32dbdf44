"""A claim's commands (bench/claims/run.py): each a `python -m ...` step, skipped once its `done` path exists.

    run_step(step, dry_run)          print the command, run it (unless dry_run), mark it done
    run_steps(steps, dry_run, jobs)  the same for steps that depend on none of the others, `jobs` at a time
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.claims.spec import ROOT


@dataclass
class Step:
    name: str
    argv: list[str]       # python -m ... (this interpreter, from the repository root)
    done: Path            # exists once the step finished
    mark: bool = False    # run.py writes `done` after the command succeeds (its own outputs grow while it runs)
    log: Path | None = None   # its output is appended there (steps run side by side would interleave on the terminal)
    seed: int | None = None   # the claim seed it runs (per-seed steps; run.py --seeds picks by it)
    build: int | None = None  # the policy build it runs on (run.py --builds picks by it)


def run_step(step: Step, dry_run: bool) -> None:
    if step.done.exists():
        print(f"[claims] {step.name}: done ({step.done})")
        return
    print(f"$ {shlex.join(step.argv)}" + (f"  >> {step.log}" if step.log else ""), flush=True)
    if dry_run:
        return
    argv = [sys.executable, *step.argv[1:]]   # python -m ...
    if step.log is None:
        subprocess.run(argv, cwd=ROOT, check=True)
    else:
        step.log.parent.mkdir(parents=True, exist_ok=True)
        with step.log.open("a") as log:
            subprocess.run(argv, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    if step.mark:
        step.done.parent.mkdir(parents=True, exist_ok=True)
        step.done.touch()


def run_steps(steps: list[Step], dry_run: bool, jobs: int = 1) -> None:
    """Every step, `jobs` at a time: only for steps of which none reads another's output. A failed step does not
    stop the others already queued (each is a run of hours); the first failure is raised once all have ended."""
    if jobs <= 1 or dry_run:
        for step in steps:
            run_step(step, dry_run)
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_step, step, False) for step in steps]
    for future in futures:
        future.result()
