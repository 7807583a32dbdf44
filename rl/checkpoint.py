"""Round checkpoints: everything needed to continue a run exactly.

    <out_dir>/checkpoints/round_0003/
        policy/      policy weights + optimizer (DeepSpeed checkpoint, or policy.pt)
        prm/         PRM trainable weights + optimizer (PRMLearner.save_checkpoint)
        state.pt     round counter, data position, RNG states (python, numpy, torch), metrics history,
                     ledger path (rank 0's)
        rng_rank1.pt ... each further rank's RNG states (N ranks resume with the same N)
The judge ledger is an SQLite file outside the checkpoint (<out_dir>/labels.sqlite): every label is
committed there before use, so a round killed half-way and replayed after resume finds the labels it
already paid for and asks the judge nothing twice.
A checkpoint is written to a temporary directory and renamed into place: a kill mid-save leaves the
previous round's checkpoint as the latest. With N ranks the save is collective: rank 0 alone makes
and renames the directory, every rank writes its DeepSpeed shards in between (barriers order the three).
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

_ROUND_DIR = re.compile(r"round_(\d+)$")


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    root = checkpoint_root(out_dir)
    found = [p for p in root.glob("round_*") if _ROUND_DIR.search(p.name) and (p / "state.pt").is_file()]
    return max(found, key=lambda p: int(_ROUND_DIR.search(p.name).group(1)), default=None)


def resolve_resume(resume: str, out_dir: str | Path) -> Path | None:
    """trainer.resume: auto (latest under out_dir, if any) | never | <checkpoint dir>."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    path = Path(resume)
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"trainer.resume={resume!r}: no state.pt there (a round_NNNN dir is expected)")
    return path


def save_round(out_dir: str | Path, round_index: int, policy, learner, state: dict, keep: int = 2,
               ranks=None) -> Path:
    """Every rank calls it (DeepSpeed saves are collective); `ranks`: rl.distributed.Ranks (None = one)."""
    rank, world = (ranks.rank, ranks.world) if ranks is not None else (0, 1)
    barrier = ranks.barrier if ranks is not None else (lambda: None)
    root = checkpoint_root(out_dir)
    final = root / f"round_{round_index:04d}"
    tmp = root / f".tmp_round_{round_index:04d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    policy.save(tmp / "policy")
    if learner is not None:
        learner.save_checkpoint(tmp / "prm")
    if rank > 0:
        torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    barrier()
    if rank == 0:
        torch.save({**state, "round": round_index, "rng": rng_state(), "world": world}, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        rounds = sorted((p for p in root.glob("round_*") if _ROUND_DIR.search(p.name)), key=lambda p: p.name)
        for old in rounds[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_round(path: Path, policy, learner, ranks=None) -> dict:
    """Restore weights and optimizers in place; return the saved state (this rank's RNG restored too)."""
    rank, world = (ranks.rank, ranks.world) if ranks is not None else (0, 1)
    state = torch.load(path / "state.pt", weights_only=False)
    if state.get("world", 1) != world:
        raise ValueError(f"{path} was saved by {state.get('world', 1)} rank(s); resume it with as many "
                         f"(this run has {world}): DeepSpeed shards and per-rank RNG states are per rank")
    policy.load(path / "policy")
    if learner is not None:
        learner.load_checkpoint(path / "prm")
    set_rng_state(state["rng"] if rank == 0 else torch.load(path / f"rng_rank{rank}.pt", weights_only=False))
    return state
