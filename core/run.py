"""What every command does around its work: seed, find where to resume, log metrics, anchor out_dir.

Seeding from trainer.seed: rl.online, prm.train, judges.eval (rl.search seeds each run from its seeds);
metrics.jsonl + TensorBoard under trainer.out_dir: rl.online, prm.train, judges.eval; resume_dir:
prm.train; anchored paths: rl.online, prm.eval, judges.eval. It lives in judges, the bottom layer,
because it needs nothing from prm or rl and judges.eval may import neither.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np


def seed_everything(seed: int) -> None:
    import torch  # here: judges itself needs no torch, only the commands that train do

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def anchored(path: str) -> str:
    """`path` relative to where the command was started: hydra may change the working directory."""
    if os.path.isabs(path):
        return path
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import get_original_cwd
        base = get_original_cwd() if HydraConfig.initialized() else os.getcwd()
    except (ImportError, ValueError):
        base = os.getcwd()
    return os.path.join(base, path)


def resume_dir(resume: str, default: Path, marker: str) -> Path | None:
    """trainer.resume: `auto` = `default` when it holds `marker`, `never` = None, else that directory
    (which must hold `marker`)."""
    if resume == "never":
        return None
    if resume == "auto":
        return default if (default / marker).exists() else None
    path = Path(resume)
    if not (path / marker).exists():
        raise FileNotFoundError(f"trainer.resume={resume!r}: no {marker} there")
    return path


LOCK_FILE = ".run.lock"


class OutDirBusy(RuntimeError):
    """Another live run holds this out_dir."""


@contextlib.contextmanager
def out_dir_lock(out_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold <out_dir>/.run.lock for the run: a second run on the same out_dir fails at once, naming the
    holder, instead of interleaving metrics and checkpoints. An flock: the kernel drops it when the
    holder dies, so a killed run leaves nothing stale behind. Only rank 0 takes it (`enabled`)."""
    if not enabled:
        yield
        return
    path = Path(out_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip() or "unknown"
            raise OutDirBusy(f"trainer.out_dir={str(out_dir)!r} is in use by another run ({holder}): wait for it "
                             f"to end or pick another trainer.out_dir") from None
        os.ftruncate(fd, 0)
        command = " ".join(sys.argv)[:300]
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock


class MetricsLog:
    """One JSON line per step in <out_dir>/metrics.jsonl and the same scalars in TensorBoard (<out_dir>/tb).

    `history` (a resumed run's logged steps) rewrites the file, so a kill after a step that was logged
    but not checkpointed leaves no duplicate; None appends. `enabled=False` (non-zero ranks) writes nothing."""

    def __init__(self, out_dir: Path, step_key: str, history: list[dict] | None = None, enabled: bool = True,
                 tb_prefix: str = ""):
        self.step_key, self.enabled, self.tb_prefix, self.tb = step_key, enabled, tb_prefix, None
        self.path = Path(out_dir) / "metrics.jsonl"
        if not enabled:
            return
        if history is not None:
            self.path.write_text("".join(json.dumps(m) + "\n" for m in history))
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(out_dir) / "tb"))
        except ImportError:  # tensorboard is a dependency, but a run should not die without it
            self.tb = None

    def write(self, metrics: dict, histograms: dict[str, list[float]] | None = None) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(metrics) + "\n")
        if self.tb is None:
            return
        step = metrics[self.step_key]
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != self.step_key and math.isfinite(value):
                self.tb.add_scalar(self.tb_prefix + key, value, step)
        for key, values in (histograms or {}).items():
            if values:
                self.tb.add_histogram(key, np.asarray(values), step)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
