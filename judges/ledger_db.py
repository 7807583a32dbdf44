"""The ledger's SQLite file: schema, migrations and the transactions the ledger runs.

Spend is the sum of `charges` (one row per billed attempt, whether or not it gave a verdict) plus
the bounds held by live `reservations`. Token counts are clamped when stored and summed with TOTAL()
(a float), so no reported usage can overflow a sum and lock the file up. Every budget decision runs inside BEGIN IMMEDIATE (SQLite's
write lock), so all threads and processes sharing the file decide on the same numbers.
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

from judges.base import Cost, Verdict

log = logging.getLogger(__name__)

MAX_TOKENS_PER_CHARGE = 2**40  # as judges.chat_client.MAX_REPORTED_TOKENS: any judge, any caller

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY,
    judge TEXT NOT NULL,               -- judge identity (never a secret)
    item_hash TEXT NOT NULL,           -- sha256 of canonical JSON [question, steps]
    question TEXT NOT NULL,
    steps TEXT NOT NULL,               -- JSON list of strings
    first_error INTEGER,               -- NULL = invalid verdict (paid, never trained on)
    raw TEXT NOT NULL,                 -- the judge's raw output
    calls INTEGER NOT NULL,            -- this label's cost over all its attempts (retries included)
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,             -- the judge's own time (retries included)
    wall_s REAL NOT NULL,              -- reservation to commit, as the ledger saw it
    created_at TEXT NOT NULL,          -- UTC ISO 8601
    UNIQUE (judge, item_hash)
);
CREATE TABLE IF NOT EXISTS charges (   -- every billed attempt: the budget is their sum
    id INTEGER PRIMARY KEY,
    judge TEXT NOT NULL,
    item_hash TEXT NOT NULL,
    label INTEGER NOT NULL,            -- 1: the attempt whose verdict was committed (counts as a label)
    calls INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,
    reason TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY,
    judge TEXT NOT NULL,
    item_hash TEXT NOT NULL,
    tokens INTEGER NOT NULL,           -- upper bound of the next attempt's tokens
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL DEFAULT 0 -- lease: renewed while the holder lives, released once past
);
CREATE TABLE IF NOT EXISTS spilled (   -- spill-file records (ledger_spill.py) stored here: never twice
    id TEXT PRIMARY KEY
);
"""


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class LedgerDB:
    def __init__(self, path: Path, busy_timeout_s: float = 60.0):
        self.path = path
        self._lock = threading.Lock()  # one connection, shared by the loop and its helper threads
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
        self._switch_to_wal(busy_timeout_s)
        self._db.execute("PRAGMA synchronous=NORMAL")  # with WAL: a commit survives a process crash
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._migrate()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite ends it itself on some errors (a full disk)
                    self._db.execute("ROLLBACK")
                raise

    def _switch_to_wal(self, timeout_s: float) -> None:
        """Ranks that open a new ledger at once race for the switch to WAL, which needs the file's exclusive
        lock: SQLite answers the one already holding a read lock with "database is locked" at once, not
        through its busy handler (waiting there could deadlock). So retry, backing off, until the busy
        timeout; once one process has switched, the mode is the file's and the switch asks for no lock."""
        deadline, delay = time.monotonic() + timeout_s, 0.01
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 0.5)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        had_labels = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='labels'").fetchone() is not None
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(reservations)")}
        if "expires_at" not in columns:
            self._db.execute("ALTER TABLE reservations ADD COLUMN expires_at REAL NOT NULL DEFAULT 0")
        if version < SCHEMA_VERSION and had_labels:  # a version-1 file: its spend was the labels' cost
            self._db.execute(
                "INSERT INTO charges (judge, item_hash, label, calls, prompt_tokens, completion_tokens, seconds,"
                " reason, created_at) SELECT judge, item_hash, 1, calls, prompt_tokens, completion_tokens, seconds,"
                " 'migrated', created_at FROM labels")
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self, fn):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # the write lock: no other process counts meanwhile
            try:
                result = fn()
                self._db.execute("COMMIT")
                return result
            except BaseException:
                if self._db.in_transaction:  # SQLite ends it itself on some errors (a full disk)
                    self._db.execute("ROLLBACK")
                raise

    # ---- spend --------------------------------------------------------------------------------
    def _committed(self) -> tuple[int, int, int]:
        row = self._db.execute(
            "SELECT TOTAL(label), TOTAL(prompt_tokens) + TOTAL(completion_tokens), TOTAL(calls) FROM charges").fetchone()
        return tuple(int(x) for x in row)  # type: ignore[return-value]

    def _reserved(self) -> tuple[int, int]:
        count, tokens = self._db.execute("SELECT COUNT(*), TOTAL(tokens) FROM reservations").fetchone()
        return count, int(tokens)

    def spent(self) -> dict[str, int]:
        with self._lock:
            labels, tokens, calls = self._committed()
            r_labels, r_tokens = self._reserved()
        return {"labels": labels + r_labels, "tokens": tokens + r_tokens, "calls": calls,
                "committed_labels": labels, "committed_tokens": tokens}

    # ---- the two statements several transactions share (callers hold the lock) --------------------
    def _label(self, judge: str, key: str, reask_invalid: bool = False) -> Verdict | None:
        """The committed verdict of (judge, item), as a free answer from the ledger; None if there is none
        (or, with reask_invalid, if the one there is invalid)."""
        row = self._db.execute("SELECT first_error, raw FROM labels WHERE judge = ? AND item_hash = ?",
                               (judge, key)).fetchone()
        return None if row is None or (reask_invalid and row[0] is None) else _stored(*row)

    def _drop_reservation(self, reservation: int) -> None:
        self._db.execute("DELETE FROM reservations WHERE id = ?", (reservation,))

    # ---- reservations -------------------------------------------------------------------------
    def reserve(self, judge: str, key: str, tokens: int, max_labels: int | None, max_tokens: int | None,
                lease_s: float, worst: int | None = None, reask_invalid: bool = False) -> tuple[str, object]:
        """One of: ("label", Verdict) committed already; ("held", None) another live reservation holds
        the item; ("over", None) committed spend alone leaves no room for one attempt (`tokens`);
        ("wait", None) room only if live reservations end below what they hold; ("reserved", id).

        A reservation holds `worst` (every attempt the item may make, retries included) or, when no
        other is live, what is left of the cap: an item runs beside others only if all their retries
        and its own fit, so a budget labels the same items at any number of requests in flight."""
        def run() -> tuple[str, object]:
            now = time.time()
            self._db.execute("DELETE FROM reservations WHERE expires_at < ?", (now,))
            verdict = self._label(judge, key, reask_invalid)
            if verdict is not None:
                return "label", verdict
            if self._db.execute("SELECT 1 FROM reservations WHERE judge = ? AND item_hash = ?",
                                (judge, key)).fetchone():
                return "held", None
            labels, spent_tokens, _ = self._committed()
            r_labels, r_tokens = self._reserved()
            if ((max_labels is not None and labels + 1 > max_labels)
                    or (max_tokens is not None and spent_tokens + tokens > max_tokens)):
                return "over", None
            hold = max(tokens, worst or 0)
            if max_tokens is not None and r_labels == 0:
                hold = max(tokens, min(hold, max_tokens - spent_tokens))
            if ((max_labels is not None and labels + r_labels + 1 > max_labels)
                    or (max_tokens is not None and spent_tokens + r_tokens + hold > max_tokens)):
                return "wait", None
            cur = self._db.execute(
                "INSERT INTO reservations (judge, item_hash, tokens, host, pid, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (judge, key, hold, socket.gethostname(), os.getpid(), now, now + lease_s))
            return "reserved", cur.lastrowid
        return self._transaction(run)

    def holder(self, judge: str, key: str) -> tuple[str, Verdict | None]:
        """("label", verdict) | ("held", None) by a live reservation | ("free", None)."""
        with self._lock:
            verdict = self._label(judge, key)
            if verdict is not None:
                return "label", verdict
            live = self._db.execute("SELECT 1 FROM reservations WHERE judge = ? AND item_hash = ? AND expires_at >= ?",
                                    (judge, key, time.time())).fetchone()
        return ("held" if live else "free"), None

    def renew(self, reservations: list[int], lease_s: float) -> None:
        if reservations:
            with self._lock:
                self._db.executemany("UPDATE reservations SET expires_at = ? WHERE id = ?",
                                     [(time.time() + lease_s, rid) for rid in reservations])

    def release(self, reservation: int) -> None:
        with self._lock:
            self._drop_reservation(reservation)

    def release_dead(self) -> int:
        """Reservations of processes on this host that are gone (killed mid-call) are not spend."""
        host = socket.gethostname()
        with self._lock:
            rows = self._db.execute("SELECT id, pid FROM reservations WHERE host = ?", (host,)).fetchall()
            dead = [rid for rid, pid in rows if not _pid_alive(pid)]
            for rid in dead:
                self._drop_reservation(rid)
        return len(dead)

    # ---- charges and labels -------------------------------------------------------------------
    def _charge(self, judge: str, key: str, cost: Cost, label: bool, reason: str) -> None:
        self._db.execute(
            "INSERT INTO charges (judge, item_hash, label, calls, prompt_tokens, completion_tokens, seconds,"
            " reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (judge, key, int(label), cost.calls, _clamp(cost.prompt_tokens), _clamp(cost.completion_tokens),
             cost.seconds, reason, _now_iso()))

    def _insert_label(self, judge: str, key: str, question: str, steps: list[str], first_error: int | None,
                      raw: str, total: Cost, wall_s: float, reask_invalid: bool = False) -> bool:
        """Store a verdict; False if the item holds one already. With reask_invalid, an invalid verdict
        stored for the item gives way, moved past every id (readers of rows after an id see it)."""
        values = (json.dumps(steps, ensure_ascii=False), first_error, raw, total.calls, _clamp(total.prompt_tokens),
                  _clamp(total.completion_tokens), total.seconds, wall_s, _now_iso())
        if reask_invalid:
            cur = self._db.execute(
                "UPDATE labels SET id = (SELECT MAX(id) + 1 FROM labels), steps = ?, first_error = ?, raw = ?,"
                " calls = ?, prompt_tokens = ?, completion_tokens = ?, seconds = ?, wall_s = ?, created_at = ?"
                " WHERE judge = ? AND item_hash = ? AND first_error IS NULL", (*values, judge, key))
            if cur.rowcount == 1:
                return True
        cur = self._db.execute(
            "INSERT OR IGNORE INTO labels (judge, item_hash, question, steps, first_error, raw, calls,"
            " prompt_tokens, completion_tokens, seconds, wall_s, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (judge, key, question, *values))
        return cur.rowcount == 1

    def _first_store(self, spill_id: str | None) -> bool:
        """False when the spill record `spill_id` is stored already (None: not a spilled write)."""
        if spill_id is None:
            return True
        return self._db.execute("INSERT OR IGNORE INTO spilled (id) VALUES (?)", (spill_id,)).rowcount == 1

    def charge_attempt(self, reservation: int, judge: str, key: str, cost: Cost, max_tokens: int | None,
                       next_tokens: int = 0) -> bool:
        """Bill a failed attempt; True if the budget still covers the retry (`next_tokens`) beside what
        the other live reservations hold. The reservation then holds what its remaining attempts may cost."""
        def run() -> bool:
            if cost.calls or cost.tokens:
                self._charge(judge, key, cost, False, "retried")
            row = self._db.execute("SELECT tokens FROM reservations WHERE id = ?", (reservation,)).fetchone()
            if row is None:
                return False  # our lease lapsed: another caller may hold the item now
            if cost.tokens:  # one of the attempts the hold covers is spent (waits for a server that is down cost none)
                self._db.execute("UPDATE reservations SET tokens = ? WHERE id = ?",
                                 (max(next_tokens, row[0] - next_tokens), reservation))
            if max_tokens is None:
                return True
            _, spent_tokens, _ = self._committed()
            others = self._db.execute("SELECT COALESCE(SUM(tokens), 0) FROM reservations WHERE id != ?",
                                      (reservation,)).fetchone()[0]
            return spent_tokens + others + next_tokens <= max_tokens
        return self._transaction(run)

    def charge_and_release(self, reservation: int, judge: str, key: str, cost: Cost, reason: str,
                           spill_id: str | None = None) -> None:
        def run() -> None:
            if self._first_store(spill_id) and (cost.calls or cost.tokens):
                self._charge(judge, key, cost, False, reason)
            self._drop_reservation(reservation)
        self._transaction(run)

    def commit(self, reservation: int, judge: str, key: str, question: str, steps: list[str], verdict: Verdict,
               total: Cost, wall_s: float, reask_invalid: bool = False, spill_id: str | None = None) -> bool:
        """Bill the final attempt and store the verdict; False if the item was committed already (or, for
        a spilled write, the spill record was stored by a replay meanwhile). With reask_invalid, an
        invalid verdict stored for the item gives way."""
        def run() -> bool:
            if not self._first_store(spill_id):
                self._drop_reservation(reservation)
                return True
            self._charge(judge, key, verdict.cost, True, "label")
            fresh = self._insert_label(judge, key, question, steps, verdict.first_error, verdict.raw, total, wall_s,
                                       reask_invalid)
            self._drop_reservation(reservation)
            return fresh
        return self._transaction(run)

    def store_spilled(self, record: dict) -> bool:
        """Store one spill-file record (ledger_spill.py) unless it is stored already; True if stored now."""
        def run() -> bool:
            if not self._first_store(record["id"]):
                return False
            cost = Cost(**record["cost"])
            if record["kind"] == "label":
                self._charge(record["judge"], record["key"], cost, True, "label")
                self._insert_label(record["judge"], record["key"], record["question"], record["steps"],
                                   record["first_error"], record["raw"], Cost(**record["total"]), record["wall_s"],
                                   record.get("reask_invalid", False))
            elif cost.calls or cost.tokens:
                self._charge(record["judge"], record["key"], cost, False, record["reason"])
            return True
        return self._transaction(run)

    def charge(self, judge: str, cost: Cost, reason: str) -> None:
        """Bill a call that labels no item (a start-up check)."""
        self._transaction(lambda: self._charge(judge, "", cost, False, reason))

    def lookup(self, judge: str, keys: list[str]) -> dict[str, Verdict]:
        found: dict[str, Verdict] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):  # stay under SQLite's bound-parameter limit
                chunk = unique[start:start + 500]
                rows = self._db.execute(
                    f"SELECT item_hash, first_error, raw FROM labels WHERE judge = ? AND item_hash IN "
                    f"({','.join('?' * len(chunk))})", (judge, *chunk)).fetchall()
                for key, first_error, raw in rows:
                    found[key] = _stored(first_error, raw)
        return found

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()


def _clamp(tokens: int) -> int:
    return min(max(int(tokens), 0), MAX_TOKENS_PER_CHARGE)


def _stored(first_error: int | None, raw: str) -> Verdict:
    """A committed label as the ledger answers it: free (the cost was paid when it was stored)."""
    return Verdict(first_error, raw=raw, cost=Cost(), from_ledger=True)


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
