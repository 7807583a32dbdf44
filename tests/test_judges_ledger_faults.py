"""The ledger against a hostile reply, a full disk and a lock held by another process: no paid label
lost, none paid twice, the file usable afterwards."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from judges import JudgeUnavailableError, LabelLedger, LLMJudge
from judges.chat_client import MAX_REPORTED_TOKENS, usage_of
from tests.fake_openai_server import FakeOpenAIServer, Reply
from tests.guards import no_hang

STEPS = ["a", "b", "c"]
ITEMS = [(f"item-{i}", STEPS) for i in range(6)]


def llm(server, **kw) -> LLMJudge:
    defaults = dict(model="critic", max_retries=1, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5,
                    max_tokens=32, max_concurrency=3)
    return LLMJudge(server.base_url, **{**defaults, **kw})


def answer(req, **kw) -> Reply:
    i = int(req.prompt.split("item-")[1].split()[0])
    return Reply(f"\\boxed{{{i % 3 - 1}}}", **kw)


def stored(db) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        labels = conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
        charged = conn.execute("SELECT COUNT(*) FROM charges WHERE label = 1").fetchone()[0]
    return labels, charged


def test_usage_is_clamped_to_a_bound_sqlite_can_sum():
    body = {"usage": {"prompt_tokens": 2**63, "completion_tokens": 2**62}}
    assert usage_of(body) == (MAX_REPORTED_TOKENS, MAX_REPORTED_TOKENS)


def test_usage_near_2_62_and_2_63_leaves_every_paid_reply_stored_and_the_file_usable(tmp_path):
    db = tmp_path / "l.sqlite"
    huge = {"item-0": 2**62, "item-1": 2**62, "item-2": 2**63, "item-3": 2**63}

    def script(req):
        name = req.prompt.split("item-")[1].split()[0]
        return answer(req, prompt_tokens=huge.get(f"item-{name}", 100))
    with FakeOpenAIServer(script) as server:
        with no_hang("huge usage"), LabelLedger(db) as ledger:  # no cap: every reply is paid and stored
            verdicts = ledger.label(llm(server, max_concurrency=1), ITEMS[:4])
        assert all(v is not None for v in verdicts)
        assert stored(db) == (4, 4)
        with LabelLedger(db, max_tokens=10**6) as ledger:  # reopened: every sum still works
            assert ledger.spent()["tokens"] >= 2**40
            assert ledger.label(llm(server), ITEMS[4:]) == [None, None]  # over the cap, not an error
            assert ledger.stats()[llm(server).identity]["labels"] == 4


def long_answer(req) -> Reply:  # a label needs new pages, so a file that may not grow is full at once
    return answer(req, reasoning="x" * 20_000)


def test_a_full_disk_spills_paid_replies_and_the_next_open_commits_them_once(tmp_path):
    db = tmp_path / "l.sqlite"
    with FakeOpenAIServer(long_answer) as server:
        judge = llm(server)
        ledger = LabelLedger(db, persist_retry_s=0.3)
        conn = ledger._db._db
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
        with no_hang("disk full"):
            verdicts = ledger.label(judge, ITEMS)
        assert [v.first_error for v in verdicts] == [i % 3 - 1 for i in range(len(ITEMS))]
        assert stored(db) == (0, 0) and ledger._spill.pending()
        ledger.close()
        with LabelLedger(db) as reopened:  # room again: the spill file is committed at start-up
            assert stored(db) == (len(ITEMS), len(ITEMS)) and not reopened._spill.pending()
            again = reopened.label(judge, ITEMS)
            assert all(v.from_ledger for v in again)
        with LabelLedger(db) as third:
            assert len(third) == len(ITEMS)
        assert len(server.requests) == len(ITEMS) and stored(db) == (len(ITEMS), len(ITEMS))


def test_a_disk_that_frees_up_mid_batch_commits_through_the_retry(tmp_path):
    db = tmp_path / "l.sqlite"
    with FakeOpenAIServer(long_answer) as server, LabelLedger(db, persist_retry_s=30) as ledger:
        conn = ledger._db._db
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        threading.Timer(0.5, lambda: conn.execute("PRAGMA max_page_count = 1073741823")).start()
        with no_hang("disk frees up"):
            verdicts = ledger.label(llm(server), ITEMS)
        assert all(v is not None and not v.from_ledger for v in verdicts)
        assert stored(db) == (len(ITEMS), len(ITEMS))
    with LabelLedger(db) as reopened:  # the spilled copies are known as stored: nothing charged twice
        assert stored(db) == (len(ITEMS), len(ITEMS)) and not reopened._spill.pending()


def test_a_ledger_locked_past_the_busy_timeout_loses_no_paid_reply(tmp_path):
    db = tmp_path / "l.sqlite"
    LabelLedger(db).close()
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    locked = threading.Event()

    def slow(req):  # the lock is taken while the replies are on their way
        locked.wait(5)
        return answer(req)

    def hold_lock():
        holder.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(1.5)  # longer than the ledger's busy timeout below
        holder.execute("COMMIT")
    with FakeOpenAIServer(slow) as server, LabelLedger(db, busy_timeout_s=0.3, persist_retry_s=30) as ledger:
        threading.Timer(0.2, hold_lock).start()
        with no_hang("locked ledger"):
            verdicts = ledger.label(llm(server), ITEMS)
        assert all(v is not None for v in verdicts)
        assert stored(db) == (len(ITEMS), len(ITEMS)) and len(server.requests) == len(ITEMS)
    holder.close()


def test_a_reply_body_over_max_reply_bytes_is_not_read_whole_and_is_billed(tmp_path):
    big = Reply(body='{"choices": [{"message": {"content": "' + "x" * 50_000 + '"}}]}')
    with FakeOpenAIServer([big]) as server, LabelLedger(tmp_path / "l.sqlite") as ledger:
        judge = llm(server, max_retries=1)
        judge.client.max_reply_bytes = 4096
        with pytest.raises(JudgeUnavailableError, match="max_reply_bytes=4096"):
            ledger.label(judge, ITEMS[:1])
        assert ledger.spent()["calls"] == 2  # both attempts may have been billed by the provider


def test_a_ledger_that_is_still_full_keeps_the_spill_file_for_the_next_open(tmp_path):
    db = tmp_path / "l.sqlite"
    with FakeOpenAIServer(long_answer) as server:
        judge = llm(server)
        with LabelLedger(db, persist_retry_s=0.2) as ledger:
            conn = ledger._db._db
            conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
            ledger.label(judge, ITEMS[:2])
            assert ledger.replay_spill() == 0 and ledger._spill.pending()  # still full: nothing lost
        with LabelLedger(db) as reopened:
            assert stored(db) == (2, 2) and not reopened._spill.pending()


def test_a_lock_held_when_a_batch_starts_delays_its_reservations_instead_of_failing_them(tmp_path):
    db = tmp_path / "l.sqlite"
    with FakeOpenAIServer(answer) as server, LabelLedger(db, busy_timeout_s=0.2, persist_retry_s=30) as ledger:
        holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        threading.Timer(1.0, lambda: holder.execute("COMMIT")).start()
        with no_hang("locked at the start"):
            verdicts = ledger.label(llm(server), ITEMS)
        holder.close()
        assert all(v is not None for v in verdicts) and stored(db) == (len(ITEMS), len(ITEMS))
        assert len(server.requests) == len(ITEMS)


class _RefusesWal:
    """A connection whose first `refusals` switches to WAL answer as SQLite does a rank that lost the race."""

    def __init__(self, conn, refusals: int):
        self.conn, self.refusals = conn, refusals

    def execute(self, sql, *args):
        if "journal_mode" in sql and self.refusals:
            self.refusals -= 1
            raise sqlite3.OperationalError("database is locked")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_ranks_opening_a_new_ledger_at_once_retry_the_switch_to_wal(tmp_path, monkeypatch):
    """Two ranks opening one new ledger: the switch to WAL of the one holding a read lock fails at once
    ("database is locked", no busy handler); it retries until the busy timeout, and past it says so."""
    from judges.ledger_db import LedgerDB
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: _RefusesWal(connect(*a, **k), 3))
    db = LedgerDB(tmp_path / "a.sqlite", busy_timeout_s=5.0)
    assert db._db.refusals == 0 and db._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: _RefusesWal(connect(*a, **k), 10**6))
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        LedgerDB(tmp_path / "b.sqlite", busy_timeout_s=0.2)
