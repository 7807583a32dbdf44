"""A claim's commands (bench/claims/run.py): each a `python -m ...` step, skipped once its `done` path exists.

    run_step(step, dry_run)          print the command, run it (unless dry_run), mark it done
    run_steps(steps, dry_run, jobs)  the same for steps that depend on none of the others, `jobs` at a time
    progress(steps, provenance)      how many are done, and the hours left at their mean duration

Given a `provenance` file, each launch appends the step's name and the code it ran: the commit of the
checkout it ran in, "+modified" when tracked files differed from it, and for a step on a policy build the
digest of that build's weights (a claim split over machines runs the same model on each, or says it did not) (a claim run from its own checkout,
`git worktree add`, keeps one commit while the repository moves on).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.claims.spec import ROOT, Claim


@dataclass
class Step:
    name: str
    argv: list[str]       # python -m ... (this interpreter, from the repository root)
    done: Path            # exists once the step finished
    mark: bool = False    # run.py writes `done` after the command succeeds (its own outputs grow while it runs)
    log: Path | None = None   # its output is appended there (steps run side by side would interleave on the terminal)
    seed: int | None = None   # the claim seed it runs (per-seed steps: run.py --seeds picks by it)
    build: int | None = None  # the policy build it runs on (run.py --builds picks by it)
    policy: Path | None = None   # that build's directory: each launch records its weights' digest


_APPEND = threading.Lock()   # run_steps' threads append to one provenance file


def code_version(root: Path = ROOT) -> str:
    """The commit checked out at `root`, with "+modified" when a tracked file differs from it; "unknown"
    outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        return commit + ("+modified" if git("status", "--porcelain", "--untracked-files=no").strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def weights_version(policy: Path | None) -> str | None:
    """The first 12 hex digits of the policy build's weights digest, as its quality.json records it (loading
    the build checks the weights against it, tasks/chain/policy.py); None for a step on no build, or on one
    whose quality.json records no digest."""
    quality = policy / "quality.json" if policy else None
    digest = json.loads(quality.read_text()).get("weights_sha256") if quality and quality.is_file() else None
    return digest[:12] if digest else None


def record_launch(provenance: Path, step: Step) -> None:
    row = {"step": step.name, "code": code_version(), "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if weights := weights_version(step.policy):
        row["weights"] = weights
    with _APPEND, provenance.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def code_used(provenance: Path) -> dict[str, list[str]]:
    """code version (with the policy weights, for a step on a build: "<commit> weights <sha256[:12]>") -> the
    steps launched on it (a step relaunched on other code or weights is listed under each)."""
    out: dict[str, list[str]] = {}
    for row in map(json.loads, provenance.read_text().splitlines() if provenance.is_file() else []):
        version = row["code"] + (f" weights {row['weights']}" if row.get("weights") else "")
        if row["step"] not in out.setdefault(version, []):
            out[version].append(row["step"])
    return out


def progress(steps: list[Step], provenance: Path) -> str:
    """How far a claim's steps are: done of all, and the hours left at the mean duration of the steps finished
    since launches were recorded (each from its last launch to its `done` file's time)."""
    launched = {}
    for row in map(json.loads, provenance.read_text().splitlines() if provenance.is_file() else []):
        launched[row["step"]] = datetime.fromisoformat(row["at"]).timestamp()
    done = [s for s in steps if s.done.exists()]
    spans = [s.done.stat().st_mtime - launched[s.name] for s in done if s.name in launched]
    text = f"{len(done)} of {len(steps)} steps done"
    if spans and len(done) < len(steps):
        mean = sum(spans) / len(spans)
        text += (f"; {mean / 60:.0f} min a step (mean of {len(spans)} timed), about "
                 f"{mean * (len(steps) - len(done)) / 3600:.1f} h of steps left, one at a time")
    return text


def run_step(step: Step, dry_run: bool, provenance: Path | None = None) -> None:
    if step.done.exists():
        print(f"[claims] {step.name}: done ({step.done})")
        return
    print(f"$ {shlex.join(step.argv)}" + (f"  >> {step.log}" if step.log else ""), flush=True)
    if dry_run:
        return
    if provenance is not None:
        record_launch(provenance, step)
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


def run_steps(steps: list[Step], dry_run: bool, jobs: int = 1, provenance: Path | None = None) -> None:
    """Every step, `jobs` at a time: only for steps of which none reads another's output. A failed step does not
    stop the others already queued (each is a run of hours); the first failure is raised once all have ended."""
    if jobs <= 1 or dry_run:
        for step in steps:
            run_step(step, dry_run, provenance)
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_step, step, False, provenance) for step in steps]
    for future in futures:
        future.result()


def build_dir(seed: int) -> Path:
    from core.models import cache_root
    from tasks.chain.policy import ChainModelSpec, model_dir
    return model_dir(cache_root(), ChainModelSpec(seed=seed).name)


def build_steps(claim: Claim) -> list[Step]:
    return [Step(f"build {b}", ["python", "-m", "tasks.chain.policy", "--seed", str(b)], build_dir(b) / "quality.json",
                 build=b, policy=build_dir(b)) for b in claim.builds]
