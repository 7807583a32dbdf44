"""Processes sharing one ledger file over real HTTP: each item paid once, budgets exact; and the key
canary: a key with a trailing newline never reaches stdout, stderr or any file."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_openai_server import FakeOpenAIServer, Reply

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 40

WORKER = """
import json, sys
from judges import LabelLedger, LLMJudge
url, db, budget = sys.argv[1], sys.argv[2], sys.argv[3]
judge = LLMJudge(url, model="critic", max_concurrency=8, timeout_s=30, max_retries=0)
items = [(f"item-{i}", ["a", "b", "c"]) for i in range(int(sys.argv[4]))]
with LabelLedger(db, max_labels=None if budget == "none" else int(budget)) as ledger:
    print(json.dumps([None if v is None else v.first_error for v in ledger.label(judge, items)]))
"""


def answer(req) -> Reply:
    i = int(req.prompt.split("item-")[1].split()[0])
    return Reply(f"\\boxed{{{i % 3 - 1}}}", delay_s=0.1)


def start(server: FakeOpenAIServer, db: Path, budget: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", WORKER, server.base_url, str(db), budget, str(N_ITEMS)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("budget", ["none", "25"])
def test_two_processes_on_one_ledger_pay_each_item_once(tmp_path, budget):
    db = tmp_path / "ledger.sqlite"
    with FakeOpenAIServer(answer) as server:
        procs = [start(server, db, budget) for _ in range(2)]
        outs = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outs.append(json.loads(out))
        keys = [r.prompt.split("item-")[1].split()[0] for r in server.requests]
    expected_paid = N_ITEMS if budget == "none" else int(budget)
    assert len(keys) == len(set(keys)) == expected_paid  # requests at the server == unique items paid
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == expected_paid
        assert conn.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == expected_paid
        assert conn.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
    for out in outs:  # whoever paid, both processes read the same committed labels
        for i, label in enumerate(out):
            assert label is None or label == i % 3 - 1
    labelled = [{i for i, v in enumerate(out) if v is not None} for out in outs]
    assert labelled[0] | labelled[1] == {int(k) for k in keys}


CANARY = "sk-canary-7f3a9c1e5b"


def test_key_canary_with_trailing_newline_is_absent_from_outputs_and_files(tmp_path):
    def echo(req) -> Reply:  # a hostile server: echoes the Authorization header in error bodies
        auth = req.headers.get("Authorization", "")
        if req.index == 0:
            return Reply(status=500, body=json.dumps({"error": f"bad request, you sent {auth!r}"}))
        return Reply(status=401, body=json.dumps({"error": f"refused {auth!r}"}))
    db = tmp_path / "ledger.sqlite"
    with FakeOpenAIServer(echo) as server:
        proc = start(server, db, "none", env={"PRMLOOP_JUDGE_API_KEY": CANARY + "\n"})
        out, err = proc.communicate(timeout=120)
        sent = [r.headers.get("Authorization") for r in server.requests]
    assert proc.returncode != 0 and ("JudgeAuthError" in err or "JudgeUnavailableError" in err)
    assert sent and all(s == f"Bearer {CANARY}" for s in sent)  # stripped, then sent
    assert CANARY not in out and CANARY not in err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
