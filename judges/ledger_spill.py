"""The ledger's write-ahead spill file: paid replies the SQLite file could not take (disk full, locked
past the busy timeout, an I/O error) wait here, one fsynced JSON line each, and are committed the next
time a ledger opens the file (or starts a batch).

Each record carries a random id; the transaction that finally stores a record also stores its id (the
`spilled` table), so a record is committed once however often it is replayed. An flock on a sidecar
file orders appends and replays across the processes sharing one ledger.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)


class SpillFile:
    def __init__(self, ledger_path: Path):
        self.path = ledger_path.with_name(ledger_path.name + ".spill.jsonl")
        self._lock_path = ledger_path.with_name(ledger_path.name + ".spill.lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, record: dict) -> None:
        """Write one record and fsync it before returning (raises OSError when even this fails)."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._locked():
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def pending(self) -> bool:
        return self.path.exists()

    def replay(self, apply: Callable[[dict], bool]) -> int:
        """apply(record) -> True if it was stored now (False: stored before). Removes the file once every
        record is stored; a write error leaves it for the next replay. Returns the records stored now."""
        if not self.path.exists():
            return 0
        stored = 0
        with self._locked():
            if not self.path.exists():
                return 0
            for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a write cut by a crash: it never returned, so never used
                    log.warning("%s line %d: an incomplete record (cut by a crash) skipped", self.path, number)
                    continue
                stored += bool(apply(record))
            self.path.unlink()
        return stored
