"""Round checkpoints: everything needed to continue a run exactly.

    <out_dir>/checkpoints/round_0003/
        policy/        policy weights + optimizer (DeepSpeed checkpoint, or model.safetensors + policy.pt)
        prm/           PRM trainable weights + optimizer (PRMLearner.save_checkpoint)
        implicit/      PRIME's implicit PRM (algo.process_source=implicit): model.safetensors + optimizer.pt
        state.pt       round counter, data position, RNG states (python, numpy, torch), metrics history,
                       ledger path (rank 0's; tensors and plain containers: loaded with weights_only=True)
        rng_rank1.pt   ... each further rank's RNG states (N ranks resume with the same N)
        ledger.sqlite  the judge ledger, when it lives on a node-local path (several ranks, or out_dir on a
                       network filesystem: core/storage.py); put back there at resume when missing or older
        manifest.json  sha256 and size of every file above, written last; the digests are computed while
                       each rank writes its files and gathered to rank 0 (no re-read of the round)
Nothing in a checkpoint executes code on load (core/checkpoint_io.py). Every file is checked against
the manifest before loading (present, at its written size; trainer.resume_check=sha256 also re-hashes
every file): a damaged checkpoint is named with its round and file; with trainer.resume=auto the
newest intact one is used instead, with a loud warning saying so.
The judge ledger is an SQLite file outside the checkpoint (<out_dir>/ledger.sqlite): every label is
committed there before use, so a round killed half-way and replayed after resume finds the labels it
already paid for and asks the judge nothing twice.
A checkpoint is written to a temporary directory and renamed into place: a kill mid-save leaves the
previous round's checkpoint as the latest. With N ranks the save is collective: rank 0 alone makes
and renames the directory, every rank writes its DeepSpeed shards in between (barriers order the three).
"""
from __future__ import annotations

import logging
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from core.storage import restore_sqlite, snapshot_sqlite
from core.checkpoint_io import (CheckpointError, load_state, numpy_rng_plain, numpy_rng_state, recording_digests,
                                save_state, verify, write_manifest)

log = logging.getLogger(__name__)
LEDGER_COPY = "ledger.sqlite"   # a node-local judge ledger's copy in a round checkpoint

_ROUND_DIR = re.compile(r"round_(\d+)$")


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": numpy_rng_plain(np.random.get_state()),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(numpy_rng_state(state["numpy"]))
    torch.set_rng_state(state["torch"])


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def _rounds(out_dir: str | Path) -> list[Path]:
    """Round directories, newest first."""
    found = [p for p in checkpoint_root(out_dir).glob("round_*") if p.is_dir() and _ROUND_DIR.search(p.name)]
    return sorted(found, key=lambda p: int(_ROUND_DIR.search(p.name).group(1)), reverse=True)


def latest_checkpoint(out_dir: str | Path, full: bool = False) -> Path | None:
    """The newest intact round; a damaged newer one is skipped with a loud warning naming it.
    full: re-hash every file (else: every file present at its written size)."""
    for path in _rounds(out_dir):
        try:
            verify(path, f"round {int(_ROUND_DIR.search(path.name).group(1))} checkpoint", full)
        except CheckpointError as exc:
            message = f"WARNING: {exc}; trainer.resume=auto falls back to an older checkpoint"
            log.warning(message)
            print(message, file=sys.stderr, flush=True)
            continue
        return path
    return None


def resolve_resume(resume: str, out_dir: str | Path, full: bool = False) -> Path | None:
    """trainer.resume: auto (newest intact round under out_dir, if any) | never | <checkpoint dir>.
    full (trainer.resume_check=sha256): re-hash every file of the checkpoint chosen."""
    if resume == "never":
        return None
    if resume == "auto":
        found = latest_checkpoint(out_dir, full)
        if found is None and _rounds(out_dir):  # a fresh start here would overwrite metrics.jsonl
            raise CheckpointError(
                f"trainer.out_dir={str(out_dir)!r} holds {len(_rounds(out_dir))} round checkpoints and none is "
                f"intact (see above): trainer.resume=never starts over there (overwriting its metrics.jsonl), "
                f"trainer.resume=<round dir> names one, or pick another trainer.out_dir")
        if found is not None and _rounds(out_dir)[0] != found:
            message = f"WARNING: resuming from {found.name}, not the newest round (see above)"
            log.warning(message)
            print(message, file=sys.stderr, flush=True)
        return found
    path = Path(resume)
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"trainer.resume={resume!r}: no state.pt there (a round_NNNN dir is expected)")
    verify(path, "checkpoint", full)  # an explicit choice that is damaged is an error, not a fallback
    return path


def save_round(out_dir: str | Path, round_index: int, policy, learner, state: dict, keep: int = 2,
               ranks=None, ledger: Path | None = None, implicit=None) -> Path:
    """Every rank calls it (DeepSpeed saves are collective); `ranks`: core.distributed.Ranks (None = one).
    `ledger`: rank 0's node-local judge ledger, copied in as ledger.sqlite (restored by restore_ledger).
    `implicit`: PRIME's implicit PRM (prm.implicit, one process) when the run has one."""
    rank, world = (ranks.rank, ranks.world) if ranks is not None else (0, 1)
    barrier = ranks.barrier if ranks is not None else (lambda: None)
    root = checkpoint_root(out_dir)
    final = root / f"round_{round_index:04d}"
    tmp = root / f".tmp_round_{round_index:04d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    with recording_digests() as written:   # each file's sha256 as it is written, on the rank that writes it
        policy.save(tmp / "policy")
        if learner is not None:
            learner.save_checkpoint(tmp / "prm")
        if implicit is not None:
            implicit.save(tmp / "implicit")
        # state["rng"], when given, is the RNG state of the round's end (rl.schedule: taken before the next
        # round's generation began); else the state now. Each rank keeps its own.
        if rank > 0:
            save_state(state.get("rng") or rng_state(), tmp / f"rng_rank{rank}.pt")
    mine = {Path(p).relative_to(tmp.resolve()).as_posix(): d for p, d in written.items()
            if Path(p).is_relative_to(tmp.resolve())}
    everyone = ranks.gather(mine) if ranks is not None else [mine]   # also the barrier: every rank's files are in
    if rank == 0:   # state, manifest (last, from the gathered digests), rename
        digests = {str((tmp / name).resolve()): d for part in everyone for name, d in part.items()}
        with recording_digests() as own:
            save_state({"rng": rng_state(), **state, "round": round_index, "world": world}, tmp / "state.pt")
        if ledger is not None:
            snapshot_sqlite(ledger, tmp / LEDGER_COPY)
        write_manifest(tmp, {**digests, **own}, round=round_index)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        rounds = sorted((p for p in root.glob("round_*") if _ROUND_DIR.search(p.name)), key=lambda p: p.name)
        for old in rounds[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def restore_ledger(checkpoint: Path, ledger: Path) -> str:
    """Before the ledger opens at resume: the checkpoint's copy onto the node-local path when that is missing
    or holds fewer labels (another node's, or a fresh one); a newer local ledger is kept."""
    return restore_sqlite(Path(checkpoint) / LEDGER_COPY, ledger, "labels")


def load_round(path: Path, policy, learner, ranks=None, verified: bool = False, full: bool = False,
               implicit=None) -> dict:
    """Restore weights and optimizers in place; return the saved state (this rank's RNG restored too).
    verified=True: `path` came from resolve_resume, which has checked its manifest already."""
    rank, world = (ranks.rank, ranks.world) if ranks is not None else (0, 1)
    if not verified:
        verify(path, "checkpoint", full)
    state = load_state(path / "state.pt")
    if state.get("world", 1) != world:
        raise ValueError(f"{path} was saved by {state.get('world', 1)} rank(s); resume it with as many "
                         f"(this run has {world}): DeepSpeed shards and per-rank RNG states are per rank")
    policy.load(path / "policy")
    if learner is not None:
        learner.load_checkpoint(path / "prm")
    if implicit is not None:
        implicit.load(path / "implicit")
    set_rng_state(state["rng"] if rank == 0 else load_state(path / f"rng_rank{rank}.pt"))
    return state
