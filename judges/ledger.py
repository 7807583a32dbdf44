"""The label ledger: every paid label, in SQLite, before anyone uses it.

One row per judged trajectory, keyed by (judge identity, sha256 of question + steps). A repeat is
answered from the ledger at no cost. What it guarantees, for threads and processes on one host
sharing the file:
- an item is requested at most once while a live reservation holds it: a second caller waits for the
  holder and reads its committed label; a reservation is a lease, renewed while its holder runs, so
  one left by a dead process (any host) expires, and on this host is released at once;
- every attempt a provider may bill is charged (calls, tokens, seconds), usable body or not, and the
  budgets (labels, tokens) are the sum of charges plus the bounds live reservations hold; an
  attempt is made only once its bound is reserved, so spend passes the cap only when a server
  reports more than the bound, and then no further request is admitted;
- items are admitted in input order, and an item that fits only if in-flight calls end below their
  bounds waits for them: a budget labels the same items at any number of requests in flight;
- each label is committed the moment it arrives (a killed process loses only calls in flight); when
  the file cannot take it (disk full, locked past the busy timeout) the paid reply is written ahead to
  a spill file (ledger_spill.py) and the commit retried with backoff for persist_retry_s; what is still
  spilled then is committed when a ledger next opens the file or starts a batch.

When the budget runs out, label() returns None for the items it did not pay for (never a silent
over-spend; a warning says how many).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from judges.base import Cost, Item, Judge, Verdict, item_key, run_sync
from judges.chat_client import JudgeBudgetStop, JudgeError, JudgeUnavailableError
from judges.ledger_db import LedgerDB
from judges.ledger_spill import SpillFile

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often a waiting caller looks at the file again (other processes do not notify)


@dataclass(frozen=True)
class LabelCounts:
    """What one label() call did with its items (per item, except `paid` and `cost`: per label paid)."""
    paid: int = 0  # labels paid for now (invalid ones included), an item repeated in the call once
    repeats: int = 0  # answered by the label of an identical item paid in the same call, at no cost
    cost: Cost = field(default_factory=Cost)  # what the paid labels cost (their retries included)
    valid: int = 0  # labels returned with a usable verdict (paid now or from the ledger)
    invalid: int = 0  # labels returned with an invalid verdict (paid now or from the ledger)
    ledger_hits: int = 0  # answered from the ledger at no cost
    refused_budget: int = 0  # not labelled: the budget does not cover them
    failed: int = 0  # not labelled: the judge still failed after every retry (judge.on_failure=skip)


@dataclass
class _Batch:
    results: dict[str, Verdict | None] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # keys skipped after the judge failed on them
    held: set[int] = field(default_factory=set)  # our live reservations (their leases are renewed)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None
    last_dead_check: float = 0.0


class LedgerWriteError(RuntimeError):
    """A paid reply that neither the ledger file nor its spill file could take."""


class LabelLedger:
    def __init__(self, path: str | Path, max_labels: int | None = None, max_tokens: int | None = None,
                 lease_s: float = 120.0, on_failure: str = "stop", reask_invalid: bool = False,
                 busy_timeout_s: float = 60.0, persist_retry_s: float = 120.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_labels, self.max_tokens, self.lease_s = max_labels, max_tokens, lease_s
        self.skip_failures, self.reask_invalid = str(getattr(on_failure, "value", on_failure)) == "skip", reask_invalid
        self.persist_retry_s = persist_retry_s
        self.last = LabelCounts()  # what the latest label() call did
        self._db = LedgerDB(self.path, busy_timeout_s)
        self._spill = SpillFile(self.path)
        released = self._db.release_dead()
        if released:
            log.info("released %d reservations left by dead processes in %s", released, self.path)
        self.replay_spill()

    def replay_spill(self) -> int:
        """Commit the paid replies waiting in the spill file (each once); returns how many were stored now."""
        if not self._spill.pending():
            return 0
        try:
            stored = self._spill.replay(self._db.store_spilled)
        except sqlite3.OperationalError as exc:  # still full or locked: the file waits for the next try
            log.warning("%s still cannot take the paid replies waiting in %s (%s)", self.path, self._spill.path, exc)
            return 0
        log.warning("committed %d paid replies from %s", stored, self._spill.path)
        return stored

    @classmethod
    def from_config(cls, cfg: Any, default_path: str | Path | None = None) -> "LabelLedger":
        """From a judge config (ledger_path, max_labels, max_total_tokens, ledger_lease_s): the one way
        every labelling command opens its ledger. `default_path` when ledger_path is null."""
        path = cfg.ledger_path or default_path
        if not path:
            raise ValueError("the judge config has no ledger_path")
        return cls(path, max_labels=cfg.max_labels, max_tokens=cfg.max_total_tokens, lease_s=cfg.ledger_lease_s,
                   on_failure=cfg.on_failure, reask_invalid=cfg.reask_invalid)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "LabelLedger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LabelLedger({str(self.path)!r}, max_labels={self.max_labels}, max_total_tokens={self.max_tokens})"

    # ---- labelling ----------------------------------------------------------------------------
    def label(self, judge: Judge, items: Iterable[Item]) -> list[Verdict | None]:
        """A verdict per item: from the ledger when known, else paid for (judge.max_concurrency requests
        in flight) and committed before it is returned. None = not labelled: the budget is exhausted."""
        return run_sync(self.alabel(judge, items))

    async def alabel(self, judge: Judge, items: Iterable[Item]) -> list[Verdict | None]:
        items = [(q, list(steps)) for q, steps in items]
        keys = [item_key(q, steps) for q, steps in items]
        if self._spill.pending():
            await asyncio.to_thread(self.replay_spill)
        known = self._db.lookup(judge.identity, keys)
        if self.reask_invalid:
            known = {k: v for k, v in known.items() if v.valid}
        to_pay: dict[str, Item] = {}
        for key, item in zip(keys, items):
            if key not in known:
                to_pay.setdefault(key, item)  # a repeat inside the batch is paid once
        batch = _Batch()
        if to_pay:
            await self._pay_all(judge, to_pay, batch)
        results = [known[key] if key in known else batch.results.get(key) for key in keys]
        failed = sum(v is None and key in batch.failed for v, key in zip(results, keys))
        refused = sum(v is None for v in results) - failed
        paid = [v for v in batch.results.values() if v is not None and not v.from_ledger]
        answered_now = sum(v is not None and not v.from_ledger for v in results)
        self.last = LabelCounts(paid=len(paid), repeats=answered_now - len(paid), cost=sum((v.cost for v in paid), Cost()),
                                valid=sum(v is not None and v.valid for v in results),
                                invalid=sum(v is not None and not v.valid for v in results),
                                ledger_hits=sum(v is not None and v.from_ledger for v in results),
                                refused_budget=refused, failed=failed)
        if refused:
            log.warning("judge budget exhausted (%s): %d of %d items not labelled", self._budget_text(),
                        refused, len(items))
        if failed:
            log.warning("judge failed on %d of %d items after every retry: skipped (judge.on_failure=skip)",
                        failed, len(items))
        return results

    def get(self, judge_identity: str, question: str, steps: list[str]) -> Verdict | None:
        key = item_key(question, steps)
        return self._db.lookup(judge_identity, [key]).get(key)

    async def _pay_all(self, judge: Judge, to_pay: dict[str, Item], batch: _Batch) -> None:
        slots = asyncio.Semaphore(max(1, judge.max_concurrency))
        tasks: list[asyncio.Task] = []
        async with judge.session():
            renewer = asyncio.create_task(self._renew_leases(batch))
            try:
                for key, (question, steps) in to_pay.items():  # admitted in input order, one at a time
                    await slots.acquire()
                    if batch.error is not None:
                        slots.release()
                        break
                    bound = judge.token_bound(question, steps)
                    kind, payload = await self._admit(judge, key, bound, batch)
                    if kind == "reserved":
                        tasks.append(asyncio.create_task(
                            self._pay(judge, key, question, steps, bound, payload, slots, batch)))
                        continue
                    slots.release()
                    if kind == "held":  # another caller is paying for it: read its label when it lands
                        tasks.append(asyncio.create_task(
                            self._await_holder(judge, key, question, steps, bound, slots, batch)))
                    else:
                        batch.results[key] = payload  # a label committed meanwhile, or None (over budget)
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                for task in tasks:
                    task.cancel()
                renewer.cancel()
        if batch.error is not None:
            raise batch.error

    async def _admit(self, judge: Judge, key: str, bound: int, batch: _Batch) -> tuple[str, Any]:
        """Reserve, waiting while the item fits only if calls in flight end below what they hold."""
        worst = bound * max(1, getattr(judge, "max_attempts", 1))
        while True:
            batch.changed.clear()
            kind, payload = await self._retrying(self._db.reserve, judge.identity, key, bound, self.max_labels,
                                                 self.max_tokens, self.lease_s, worst, self.reask_invalid)
            if kind != "wait":
                if kind == "reserved":
                    batch.held.add(payload)
                return kind, payload
            await self._wait_for_change(batch)

    async def _wait_for_change(self, batch: _Batch) -> None:
        if time.monotonic() - batch.last_dead_check > 1.0:
            batch.last_dead_check = time.monotonic()
            await asyncio.to_thread(self._db.release_dead)
        try:
            await asyncio.wait_for(batch.changed.wait(), POLL_S)
        except TimeoutError:
            pass

    async def _await_holder(self, judge: Judge, key: str, question: str, steps: list[str], bound: int,
                            slots: asyncio.Semaphore, batch: _Batch) -> None:
        while batch.error is None:
            kind, verdict = await self._retrying(self._db.holder, judge.identity, key)
            if kind == "label":
                batch.results[key] = verdict
                return
            if kind == "held":
                await self._wait_for_change(batch)
                continue
            await slots.acquire()  # the holder went away without a label: pay for it ourselves
            kind, payload = await self._admit(judge, key, bound, batch)
            if kind == "reserved":
                await self._pay(judge, key, question, steps, bound, payload, slots, batch)
                return
            slots.release()
            if kind != "held":
                batch.results[key] = payload
                return

    async def _pay(self, judge: Judge, key: str, question: str, steps: list[str], bound: int, reservation: int,
                   slots: asyncio.Semaphore, batch: _Batch) -> None:
        identity, start, billed = judge.identity, time.monotonic(), Cost()

        async def before_retry(cost: Cost) -> bool:
            nonlocal billed
            billed += cost
            try:
                return await asyncio.to_thread(self._db.charge_attempt, reservation, identity, key, cost,
                                               self.max_tokens, bound)
            except sqlite3.OperationalError:  # the reservation still bounds the retry: spill the charge
                await asyncio.to_thread(self._spill.append, {
                    "kind": "charge", "judge": identity, "key": key, "cost": asdict(cost), "reason": "retried",
                    "id": uuid.uuid4().hex})
                return True
        try:
            try:
                verdict = await judge.ajudge(question, steps, before_retry)
            except JudgeBudgetStop:
                await asyncio.to_thread(self._db.release, reservation)
                batch.results[key] = None
                return
            except JudgeError as exc:  # bill what it cost, then skip the item or fail the batch
                cost = getattr(exc, "cost", None) or Cost()
                reason = type(exc).__name__
                await self._persist(
                    lambda sid: self._db.charge_and_release(reservation, identity, key, cost, reason, sid),
                    {"kind": "charge", "judge": identity, "key": key, "cost": asdict(cost), "reason": reason},
                    reservation)
                if self.skip_failures and isinstance(exc, JudgeUnavailableError):  # this item; not a config error
                    log.warning("judge item %s… skipped: %s", key[:12], exc)
                    batch.results[key] = None
                    batch.failed.add(key)
                    return
                raise
            except BaseException:
                self._db.release(reservation)
                raise
            total = billed + verdict.cost
            if bound and verdict.cost.tokens > bound:
                log.warning("judge %s reported %d tokens for one call, more than its bound of %d: no further "
                            "request is admitted once spend passes the budget", identity, verdict.cost.tokens, bound)
            wall_s, reask = time.monotonic() - start, self.reask_invalid
            fresh = await self._persist(
                lambda sid: self._db.commit(reservation, identity, key, question, steps, verdict, total, wall_s,
                                            reask, sid),
                {"kind": "label", "judge": identity, "key": key, "question": question, "steps": steps,
                 "first_error": verdict.first_error, "raw": verdict.raw, "cost": asdict(verdict.cost),
                 "total": asdict(total), "wall_s": wall_s, "reask_invalid": reask}, reservation)
            if fresh is False:
                log.warning("item %s… was committed by another caller while ours was in flight (its lease had "
                            "lapsed): paid twice, both charges recorded", key[:12])
            batch.results[key] = replace(verdict, cost=total)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 (the first error stops admission; raised after the drain)
            if batch.error is None:
                batch.error = exc
        finally:
            batch.held.discard(reservation)
            slots.release()
            batch.changed.set()

    async def _retrying(self, fn, *args):
        """fn(*args) (a ledger read or a reservation: nothing paid rides on it), retried with backoff for
        persist_retry_s while the file is locked past the busy timeout (or full)."""
        deadline, delay = time.monotonic() + self.persist_retry_s, 0.05
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except sqlite3.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("the ledger %s is busy (%s): retrying", self.path, exc)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)

    async def _persist(self, write, record: dict, reservation: int) -> bool | None:
        """Run write(spill_id) (one ledger transaction). If the file cannot take it, the record goes to the
        spill file first (fsynced), then the write is retried with backoff for persist_retry_s; returns
        None when the record is left in the spill file, raises if it could be neither stored nor spilled."""
        try:
            return await asyncio.to_thread(write, None)
        except sqlite3.OperationalError as exc:
            first = exc
        spill_id, spilled = uuid.uuid4().hex, False
        try:
            await asyncio.to_thread(self._spill.append, {**record, "id": spill_id})
            spilled = True
        except OSError as exc:
            log.error("the ledger %s cannot take a paid reply (%s) and neither can its spill file (%s): retrying",
                      self.path, first, type(exc).__name__)
        log.warning("the ledger %s cannot take a paid reply (%s): spilled to %s, retrying", self.path, first,
                    self._spill.path)
        deadline, delay = time.monotonic() + self.persist_retry_s, 0.05
        while True:
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)
            try:
                return await asyncio.to_thread(write, spill_id)
            except sqlite3.OperationalError as exc:
                if time.monotonic() < deadline:
                    continue
                if not spilled:
                    raise LedgerWriteError(f"the ledger {self.path} and its spill file cannot take a paid "
                                           f"reply for {self.persist_retry_s} s ({exc})") from exc
                with contextlib.suppress(sqlite3.Error):
                    await asyncio.to_thread(self._db.release, reservation)
                log.warning("a paid reply stays in %s until the ledger can take it (%s)", self._spill.path, exc)
                return None

    async def _renew_leases(self, batch: _Batch) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 4)
            await asyncio.to_thread(self._db.renew, sorted(batch.held), self.lease_s)

    # ---- budget -------------------------------------------------------------------------------
    def spent(self) -> dict[str, int]:
        """Charged plus reserved spend: labels and tokens (and calls charged)."""
        return self._db.spent()

    def remaining(self) -> dict[str, int | None]:
        s = self.spent()
        return {"labels": None if self.max_labels is None else max(0, self.max_labels - s["labels"]),
                "tokens": None if self.max_tokens is None else max(0, self.max_tokens - s["tokens"])}

    def _budget_text(self) -> str:
        return f"judge.max_labels={self.max_labels}, judge.max_total_tokens={self.max_tokens}"

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """A read-only query on the ledger file (its tables: labels, charges, reservations)."""
        return self._db.query(sql, params)

    def charge(self, judge_identity: str, cost: Cost, reason: str) -> None:
        """Bill calls that label no item (a judge's start-up check): they count in calls and tokens."""
        if cost.calls or cost.tokens:
            self._db.charge(judge_identity, cost, reason)

    # ---- reading it back ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self._db.query("SELECT COUNT(*) FROM labels")[0][0]

    def stats(self) -> dict[str, dict[str, float]]:
        """Per judge identity: labels (paid, invalid included), invalid, calls and tokens charged (failed
        attempts included), seconds."""
        rows = self._db.query(
            "SELECT judge, COUNT(*), SUM(first_error IS NULL), TOTAL(seconds) FROM labels GROUP BY judge ORDER BY judge")
        charged = {judge: (int(calls), int(p), int(c)) for judge, calls, p, c in self._db.query(
            "SELECT judge, TOTAL(calls), TOTAL(prompt_tokens), TOTAL(completion_tokens) FROM charges GROUP BY judge")}
        out = {}
        for judge, n, invalid, s in rows:
            calls, p, c = charged.get(judge, (0, 0, 0))
            out[judge] = {"labels": n, "invalid": invalid, "calls": calls, "prompt_tokens": p,
                          "completion_tokens": c, "tokens": p + c, "seconds": s}
        return out

    def rows(self, judge_identity: str, after_id: int = 0, upto_id: int | None = None) -> list[tuple]:
        """Committed (paid) labels of one judge in ledger order: (id, question, steps, first_error) with
        after_id < id <= upto_id; first_error None = an invalid verdict. Reservations are not labels."""
        query = "SELECT id, question, steps, first_error FROM labels WHERE judge = ? AND id > ?"
        params: tuple = (judge_identity, after_id)
        if upto_id is not None:
            query, params = query + " AND id <= ?", params + (upto_id,)
        return [(i, q, json.loads(steps), k) for i, q, steps, k in self._db.query(query + " ORDER BY id", params)]

    def export_jsonl(self, path: str | Path, judge_identity: str | None = None) -> int:
        """Write valid labels as trajectories (question, steps, first_error, source); return the count."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        query = "SELECT judge, question, steps, first_error FROM labels WHERE first_error IS NOT NULL"
        params: tuple = ()
        if judge_identity is not None:
            query, params = query + " AND judge = ?", (judge_identity,)
        rows = self._db.query(query + " ORDER BY id", params)
        with path.open("w", encoding="utf-8") as f:
            for judge, question, steps, first_error in rows:
                record = {"question": question, "steps": json.loads(steps), "first_error": first_error,
                          "source": f"ledger:{judge}"}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return len(rows)
