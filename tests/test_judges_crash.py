"""Crash safety: a labelling process SIGKILLed mid-batch loses no committed label, and its restart
pays for none of them again (only calls in flight at the kill, never committed, are repeated)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.fake_openai_server import FakeOpenAIServer, Reply

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS, FAST = 10, 4

WORKER = """
import json, sys
from judges import LabelLedger, LLMJudge
judge = LLMJudge(sys.argv[1], model="critic", max_concurrency=2, timeout_s=120, max_retries=0)
items = [(f"item-{i}", ["a", "b", "c"]) for i in range(int(sys.argv[3]))]
with LabelLedger(sys.argv[2], max_labels=int(sys.argv[3])) as ledger:  # no slack for leaked reservations
    print(json.dumps([v.first_error for v in ledger.label(judge, items)]))
"""


def answer(req, slow_after=None):
    i = int(req.prompt.split("item-")[1].split()[0])
    slow = slow_after is not None and req.index >= slow_after
    return Reply(f"\\boxed{{{i % 3 - 1}}}", delay_s=60 if slow else 0)


def committed(db: Path) -> set[str]:
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        try:
            return {q for (q,) in conn.execute("SELECT question FROM labels")}
        except sqlite3.OperationalError:
            return set()


def worker(server: FakeOpenAIServer, db: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", WORKER, server.base_url, str(db), str(N_ITEMS)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_batch_then_restart_pays_nothing_twice(tmp_path):
    db = tmp_path / "ledger.sqlite"
    with FakeOpenAIServer(lambda req: answer(req, slow_after=FAST)) as server:
        proc = worker(server, db)
        deadline = time.monotonic() + 60
        while len(committed(db)) < FAST:  # the first FAST replies come at once, the rest hang
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "worker made no progress"
            time.sleep(0.05)
        while len(server.requests) < FAST + 2:  # both worker threads are now stuck in a call
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before_kill = committed(db)
        assert len(before_kill) == FAST
        with sqlite3.connect(db) as conn:  # the in-flight calls had reserved budget
            assert conn.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 2

        server.set_script(answer)  # the endpoint recovers
        proc = worker(server, db)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        labels = json.loads(out)

    assert labels == [i % 3 - 1 for i in range(N_ITEMS)]  # all labelled, right answers
    assert len(committed(db)) == N_ITEMS
    for question in before_kill:  # committed before the kill: paid exactly once overall
        assert server.count(question + "\n") == 1, question
    for i in range(N_ITEMS):  # others: once, or twice if in flight at the kill
        assert 1 <= server.count(f"item-{i}\n") <= 2
    assert len(server.requests) == N_ITEMS + 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
