"""The label ledger: every paid label, in SQLite, before anyone uses it.

One row per judged trajectory, keyed by (judge identity, sha256 of question + steps). A repeat is
answered from the ledger at no cost. Budgets (labels, tokens) are enforced by reserving before
paying, in a BEGIN IMMEDIATE transaction that counts committed and reserved spend, so concurrent
threads or processes sharing the file can never overspend. Each label is committed the moment it
arrives, so a process killed mid-batch loses nothing it paid for; on restart, reservations left by
dead processes are released.

When the budget runs out, label() returns None for the items it did not pay for (never a silent
over-spend; a warning says how many).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from judges.base import Cost, Item, Judge, Verdict, item_key, run_bounded

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY,
    judge TEXT NOT NULL,               -- judge identity (never a secret)
    item_hash TEXT NOT NULL,           -- sha256 of canonical JSON [question, steps]
    question TEXT NOT NULL,
    steps TEXT NOT NULL,               -- JSON list of strings
    first_error INTEGER,               -- NULL = invalid verdict (paid, never trained on)
    raw TEXT NOT NULL,                 -- the judge's raw output
    calls INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,             -- the judge's own time (retries included)
    wall_s REAL NOT NULL,              -- reservation to commit, as the ledger saw it
    created_at TEXT NOT NULL,          -- UTC ISO 8601
    UNIQUE (judge, item_hash)
);
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY,
    judge TEXT NOT NULL,
    item_hash TEXT NOT NULL,
    tokens INTEGER NOT NULL,           -- upper bound of the call's tokens
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    created_at REAL NOT NULL
);
"""


class LabelLedger:
    def __init__(self, path: str | Path, max_labels: int | None = None, max_tokens: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_labels, self.max_tokens = max_labels, max_tokens
        self._lock = threading.Lock()  # one connection, shared by the judge's worker threads
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # with WAL: a commit survives a process crash
        self._db.executescript(_SCHEMA)
        self._release_dead_reservations()

    @classmethod
    def from_config(cls, cfg: Any) -> "LabelLedger":
        """From a judge config (ledger_path, max_labels, max_total_tokens)."""
        if not cfg.ledger_path:
            raise ValueError("the judge config has no ledger_path")
        return cls(cfg.ledger_path, max_labels=cfg.max_labels, max_tokens=cfg.max_total_tokens)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "LabelLedger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LabelLedger({str(self.path)!r}, max_labels={self.max_labels}, max_tokens={self.max_tokens})"

    # ---- labelling ----------------------------------------------------------------------------
    def label(self, judge: Judge, items: Iterable[Item]) -> list[Verdict | None]:
        """A verdict per item: from the ledger when known, else paid for (concurrently) and committed
        before it is returned. None = not labelled because the budget is exhausted."""
        items = [(q, list(steps)) for q, steps in items]
        keys = [item_key(q, steps) for q, steps in items]
        known = self._lookup(judge.identity, keys)
        to_pay: dict[str, Item] = {}
        for key, item in zip(keys, items):
            if key not in known:
                to_pay.setdefault(key, item)  # a repeat inside the batch is paid once
        pay_keys = list(to_pay)
        paid: dict[str, Verdict | None] = {}
        tasks = [(judge, key, *to_pay[key]) for key in pay_keys]
        for i, verdict in run_bounded(lambda task: self._pay_one(*task), tasks, judge.max_concurrency):
            paid[pay_keys[i]] = verdict
        results = [known.get(key) or paid.get(key) for key in keys]
        unpaid = sum(v is None for v in results)
        if unpaid:
            log.warning("judge budget exhausted (%s): %d of %d items not labelled", self._budget_text(),
                        unpaid, len(items))
        return results

    def get(self, judge_identity: str, question: str, steps: list[str]) -> Verdict | None:
        key = item_key(question, steps)
        return self._lookup(judge_identity, [key]).get(key)

    def _pay_one(self, judge: Judge, key: str, question: str, steps: list[str]) -> Verdict | None:
        bound = judge.token_bound(question, steps)
        reservation = self._reserve(judge.identity, key, bound)
        if reservation is None or isinstance(reservation, Verdict):
            return reservation  # budget exhausted / committed meanwhile by another process
        start = time.monotonic()
        try:
            verdict = judge.judge(question, steps)
        except BaseException:
            self._release(reservation)
            raise
        if bound and verdict.cost.tokens > bound:
            log.warning("judge %s used %d tokens, more than the %d reserved", judge.identity,
                        verdict.cost.tokens, bound)
        self._commit(reservation, judge.identity, key, question, steps, verdict, time.monotonic() - start)
        return verdict

    # ---- budget -------------------------------------------------------------------------------
    def spent(self) -> dict[str, int]:
        """Committed and reserved spend: labels and tokens."""
        with self._lock:
            return self._spent()

    def remaining(self) -> dict[str, int | None]:
        s = self.spent()
        return {"labels": None if self.max_labels is None else max(0, self.max_labels - s["labels"]),
                "tokens": None if self.max_tokens is None else max(0, self.max_tokens - s["tokens"])}

    def _spent(self) -> dict[str, int]:
        labels, tokens = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM labels").fetchone()
        r_labels, r_tokens = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(tokens), 0) FROM reservations").fetchone()
        return {"labels": labels + r_labels, "tokens": tokens + r_tokens}

    def _budget_text(self) -> str:
        return f"max_labels={self.max_labels}, max_tokens={self.max_tokens}"

    def _reserve(self, judge_identity: str, key: str, tokens: int) -> int | Verdict | None:
        """Reserve one label and `tokens` tokens: the reservation id, None if over budget, or the
        verdict if the item was committed since we looked."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # the write lock: no other process counts meanwhile
            try:
                row = self._db.execute("SELECT first_error, raw FROM labels WHERE judge = ? AND item_hash = ?",
                                       (judge_identity, key)).fetchone()
                if row is not None:
                    self._db.execute("COMMIT")
                    return Verdict(row[0], raw=row[1], cost=Cost(), from_ledger=True)
                spent = self._spent()
                if ((self.max_labels is not None and spent["labels"] + 1 > self.max_labels)
                        or (self.max_tokens is not None and spent["tokens"] + tokens > self.max_tokens)):
                    self._db.execute("COMMIT")
                    return None
                cur = self._db.execute(
                    "INSERT INTO reservations (judge, item_hash, tokens, host, pid, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (judge_identity, key, tokens, socket.gethostname(), os.getpid(), time.time()))
                self._db.execute("COMMIT")
                return cur.lastrowid
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _release(self, reservation: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM reservations WHERE id = ?", (reservation,))

    def _commit(self, reservation: int, judge_identity: str, key: str, question: str, steps: list[str],
                verdict: Verdict, wall_s: float) -> None:
        c = verdict.cost
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO labels (judge, item_hash, question, steps, first_error, raw, calls,"
                    " prompt_tokens, completion_tokens, seconds, wall_s, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (judge_identity, key, question, json.dumps(steps, ensure_ascii=False), verdict.first_error,
                     verdict.raw, c.calls, c.prompt_tokens, c.completion_tokens, c.seconds, wall_s,
                     datetime.now(timezone.utc).isoformat(timespec="milliseconds")))
                self._db.execute("DELETE FROM reservations WHERE id = ?", (reservation,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _release_dead_reservations(self) -> None:
        """Reservations of processes on this host that are gone (killed mid-call) are not spend."""
        host = socket.gethostname()
        with self._lock:
            rows = self._db.execute("SELECT id, pid FROM reservations WHERE host = ?", (host,)).fetchall()
            dead = [(rid,) for rid, pid in rows if not _pid_alive(pid)]
            if dead:
                self._db.executemany("DELETE FROM reservations WHERE id = ?", dead)
                log.info("released %d reservations left by dead processes in %s", len(dead), self.path)

    def _lookup(self, judge_identity: str, keys: list[str]) -> dict[str, Verdict]:
        found: dict[str, Verdict] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):  # stay under SQLite's bound-parameter limit
                chunk = unique[start:start + 500]
                rows = self._db.execute(
                    f"SELECT item_hash, first_error, raw FROM labels WHERE judge = ? AND item_hash IN "
                    f"({','.join('?' * len(chunk))})", (judge_identity, *chunk)).fetchall()
                for key, first_error, raw in rows:
                    found[key] = Verdict(first_error, raw=raw, cost=Cost(), from_ledger=True)
        return found

    # ---- reading it back ----------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]

    def stats(self) -> dict[str, dict[str, float]]:
        """Per judge identity: labels (paid, invalid included), invalid, tokens, seconds."""
        with self._lock:
            rows = self._db.execute(
                "SELECT judge, COUNT(*), SUM(first_error IS NULL), SUM(calls), SUM(prompt_tokens),"
                " SUM(completion_tokens), SUM(seconds) FROM labels GROUP BY judge ORDER BY judge").fetchall()
        return {judge: {"labels": n, "invalid": invalid, "calls": calls, "prompt_tokens": p,
                        "completion_tokens": c, "tokens": p + c, "seconds": s}
                for judge, n, invalid, calls, p, c, s in rows}

    def rows(self, judge_identity: str, after_id: int = 0, upto_id: int | None = None) -> list[tuple]:
        """Committed (paid) labels of one judge in ledger order: (id, question, steps, first_error) with
        after_id < id <= upto_id; first_error None = an invalid verdict. Reservations are not labels."""
        query = "SELECT id, question, steps, first_error FROM labels WHERE judge = ? AND id > ?"
        params: tuple = (judge_identity, after_id)
        if upto_id is not None:
            query, params = query + " AND id <= ?", params + (upto_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", params).fetchall()
        return [(i, q, json.loads(steps), k) for i, q, steps, k in rows]

    def export_jsonl(self, path: str | Path, judge_identity: str | None = None) -> int:
        """Write valid labels as trajectories (question, steps, first_error, source); return the count."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        query = "SELECT judge, question, steps, first_error FROM labels WHERE first_error IS NOT NULL"
        params: tuple = ()
        if judge_identity is not None:
            query, params = query + " AND judge = ?", (judge_identity,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", params).fetchall()
        with path.open("w", encoding="utf-8") as f:
            for judge, question, steps, first_error in rows:
                record = {"question": question, "steps": json.loads(steps), "first_error": first_error,
                          "source": f"ledger:{judge}"}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return len(rows)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed but unreaped child is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
