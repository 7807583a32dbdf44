"""Reliability of the llm judge + ledger under injected faults (bench/RESULTS.md, "Reliability under faults").

One row per fault, each against the scripted OpenAI-compatible server of the tests (real HTTP on
127.0.0.1, replies streamed as server-sent events), 20 items, 8 requests in flight, a budget of exactly
20 labels (the token-cap rows: a token cap), then the rows of a served critic: slow, restarting, a
held-out set inside the run's budget, and a token cap at 1, 4 and 16 requests in flight. The ledger
rows: a file that may not grow (SQLite's max_page_count, its own "database or disk is full"; reopened
afterwards, which commits the spill file), a write lock held by another process past the ledger's
busy timeout, and a second labelling run started on a busy out_dir:

    OMP_NUM_THREADS=1 python -m bench.bench_judge_faults

requests made      requests the server received
labels committed   rows in the ledger
labels lost        items the server answered with a readable label that the ledger does not hold
labels paid twice  items the server answered with a readable label more than once
budget overshoot   spend past the cap (labels, or tokens for the token-cap rows)
items              which items were labelled, as a short hash: the same hash = the same items
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import hashlib
from collections import Counter
from pathlib import Path

from judges import JudgeError, LabelLedger, LLMJudge
from tests.fake_openai_server import FakeOpenAIServer, Reply, free_port

ROOT = Path(__file__).resolve().parent.parent

N, CONCURRENCY = 20, 8
WORKER = """
import contextlib, json, sys
from core.run import out_dir_lock
from judges import LabelLedger, LLMJudge
judge = LLMJudge(sys.argv[1], model="critic", max_concurrency=8, timeout_s=30, max_retries=2,
                 backoff_base_s=0.05, backoff_max_s=0.2, max_tokens=64)
items = [(f"item-{i}", ["a", "b", "c"]) for i in range(int(sys.argv[3]))]
with out_dir_lock(sys.argv[5]) if len(sys.argv) > 5 else contextlib.nullcontext():
    with LabelLedger(sys.argv[2], max_labels=int(sys.argv[4])) as ledger:
        print(json.dumps([v is not None for v in ledger.label(judge, items)]))
"""
LOCK_HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def item_of(req) -> int:
    return int(req.prompt.split("item-")[1].split()[0])


def good(req, **kw) -> Reply:
    return Reply(f"\\boxed{{{item_of(req) % 3 - 1}}}", **kw)


def odd_body(req) -> str:
    shapes = [{"choices": [{"message": {"content": [{"type": "text", "text": "\\boxed{0}"}]}}],
               "usage": {"prompt_tokens": "12", "completion_tokens": 3}},
              {"choices": ["\\boxed{0}"], "usage": "n/a"},
              {"choices": [{"message": {"content": "\\boxed{-1}"}}], "usage": {"prompt_tokens": -499_900}}]
    return json.dumps(shapes[item_of(req) % 3])


FAULTS = {  # name -> (script(req, first_attempt) -> Reply, label cap, token cap)
    "none": (lambda req, first: good(req), N, None),
    "HTTP 500 on each first attempt": (lambda req, first: Reply(status=500, body="{}") if first else good(req), N, None),
    "HTTP 429 + Retry-After 0.2 s": (lambda req, first: Reply(status=429, body="{}", headers={"Retry-After": "0.2"})
                                     if first else good(req), N, None),
    "connection dropped, no reply": (lambda req, first: Reply(drop=True) if first else good(req), N, None),
    "no reply within timeout_s": (lambda req, first: Reply(delay_s=2) if first else good(req), N, None),
    "200, body not JSON": (lambda req, first: Reply(body="<html>busy</html>") if first else good(req), N, None),
    "200, body cut mid-way": (lambda req, first: good(req, cut=True) if first else good(req), N, None),
    "200, odd JSON shapes": (lambda req, first: Reply(body=odd_body(req)), N, None),
    "server drips 1 event / 0.4 s": (lambda req, first: good(req, drip_s=0.4) if first else good(req), N, None),
    "usage 400,080 tokens (cap 20,000)": (lambda req, first: good(req, prompt_tokens=400_000, completion_tokens=80),
                                          None, 20_000),
    "usage negative (cap 20,000)": (lambda req, first: good(req, prompt_tokens=-499_900), None, 20_000),
    "usage 2^62 tokens per reply": (lambda req, first: good(req, prompt_tokens=2**62), N, None),
    "usage 2^63 tokens per reply": (lambda req, first: good(req, prompt_tokens=2**63), N, None),
}
SLOW_CRITIQUE = "Paragraph 0 holds, paragraph 1 holds, paragraph 2 holds. " * 2  # 29 stream events of 4 chars
JUDGE_KW = dict(model="critic", max_concurrency=CONCURRENCY, timeout_s=0.5, deadline_s=1.5, max_retries=2,
                backoff_base_s=0.05, backoff_max_s=0.2, max_tokens=64)
OUT_OF_PROCESS = ["two processes, one ledger", "kill -9 mid-batch, restart", "disk full at the ledger",
                  "ledger locked 3 s by another process (busy timeout 1 s)", "second run on a busy out_dir"]


class Recorder:
    """Wraps a fault script: counts attempts per item and readable labels the server sent."""

    def __init__(self, script):
        self.script, self.lock = script, threading.Lock()
        self.attempts, self.labels_sent = Counter(), Counter()

    def __call__(self, req) -> Reply:
        i = item_of(req)
        with self.lock:
            first = self.attempts[i] == 0
            self.attempts[i] += 1
        reply = self.script(req, first)
        readable = (reply.status == 200 and not (reply.drop or reply.cut or reply.drip_s or reply.delay_s)
                    and (reply.body is None or '"\\\\boxed' in reply.body))
        if readable:
            with self.lock:
                self.labels_sent[i] += 1
        return reply


def row(name: str, recorder: Recorder, requests: int, db: Path, label_cap, token_cap) -> dict:
    with sqlite3.connect(db) as conn:
        items = sorted(q for (q,) in conn.execute("SELECT question FROM labels WHERE question LIKE 'item-%'"))
        committed = {q for (q,) in conn.execute("SELECT question FROM labels")}
        labels, tokens = (int(x) for x in conn.execute(  # TOTAL: a float, never an integer overflow
            "SELECT TOTAL(label), TOTAL(prompt_tokens) + TOTAL(completion_tokens) FROM charges").fetchone())
    held = {int(q.split("-")[1]) for q in committed}
    over = (max(0, labels - label_cap) if label_cap is not None else 0,
            max(0, tokens - token_cap) if token_cap is not None else 0)
    return {"fault": name, "requests": requests, "committed": len(committed),
            "lost": sum(1 for i in recorder.labels_sent if i not in held),
            "twice": sum(1 for n in recorder.labels_sent.values() if n > 1),
            "overshoot": f"{over[0]} labels" if label_cap is not None else f"{over[1]} tokens",
            "items": hashlib.sha256(json.dumps(items).encode()).hexdigest()[:8]}


def in_process(name: str, tmp: Path) -> dict:
    script, label_cap, token_cap = FAULTS[name]
    return run_row(name, Recorder(script), tmp, label_cap, token_cap)


def run_row(name: str, recorder: Recorder, tmp: Path, label_cap, token_cap, heldout: int = 0, **judge_kw) -> dict:
    """N items (after `heldout` held-out items, through the same ledger) against the recorder's script."""
    db = tmp / f"{hashlib.sha256(name.encode()).hexdigest()[:12]}.sqlite"
    with FakeOpenAIServer(recorder) as server:
        judge = LLMJudge(server.base_url, **{**JUDGE_KW, **judge_kw})
        with LabelLedger(db, max_labels=label_cap, max_tokens=token_cap, on_failure="skip") as ledger:
            try:
                if heldout:
                    ledger.label(judge, [(f"item-{1000 + i}", ["a", "b", "c"]) for i in range(heldout)])
                ledger.label(judge, [(f"item-{i}", ["a", "b", "c"]) for i in range(N)])
            except JudgeError as exc:
                print(f"  {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return row(name, recorder, len(server.requests), db, label_cap, token_cap)


def served_critic_rows(tmp: Path) -> list[dict]:
    """A slow critic, a restarting server, a held-out set inside the budget, a token cap at 1/4/16 in flight."""
    rows = [run_row("slow critic: 29 tokens at 0.1 s, timeout_s=0.5, deadline_s=10",
                    Recorder(lambda req, first: Reply(SLOW_CRITIQUE + f"\\boxed{{{item_of(req) % 3 - 1}}}",
                                                      token_s=0.1)), tmp, N, None, deadline_s=10),
            restarting_server(tmp),
            run_row("held-out 8 + 20 items, one ledger (cap 20)", Recorder(lambda req, first: good(req)), tmp, N,
                    None, heldout=8)]
    for concurrency in (1, 4, 16):
        rows.append(run_row(f"200 not JSON first, cap 8,000 tokens, {concurrency} in flight",
                            Recorder(lambda req, first: Reply(body="garbage") if first else
                                     good(req, prompt_tokens=200, completion_tokens=10)),
                            tmp, None, 8000, max_tokens=400, max_concurrency=concurrency))
    return rows


def restarting_server(tmp: Path) -> dict:
    """The server is killed (its connections closed) after 6 requests and is back 2 s later on the same port.
    Replies of the first server are held 0.2 s (those in flight at the kill never went out: not labels sent)."""
    name, port = "server killed mid-batch, back after 2 s (wait_s=30)", free_port()
    servers: list[FakeOpenAIServer] = []
    recorder = Recorder(lambda req, first: good(req, delay_s=0.2) if len(servers) == 1 else good(req))
    db = tmp / "restart.sqlite"
    servers.append(FakeOpenAIServer(recorder, port=port).__enter__())

    def restart() -> None:
        while len(servers[0].requests) < 6:
            time.sleep(0.01)
        servers[0].kill()
        time.sleep(2.0)
        servers.append(FakeOpenAIServer(recorder, port=port).__enter__())
    thread = threading.Thread(target=restart)
    thread.start()
    try:
        judge = LLMJudge(f"http://127.0.0.1:{port}/v1", **{**JUDGE_KW, "wait_s": 30})
        with LabelLedger(db, max_labels=N, on_failure="skip") as ledger:
            ledger.label(judge, [(f"item-{i}", ["a", "b", "c"]) for i in range(N)])
    finally:
        thread.join()
        servers[-1].__exit__()
    return row(name, recorder, sum(len(s.requests) for s in servers), db, N, None)


def worker(url: str, db: Path, cap: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", WORKER, url, str(db), str(N), str(cap)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def two_processes(tmp: Path) -> dict:
    recorder, db = Recorder(lambda req, first: good(req, delay_s=0.1)), tmp / "two.sqlite"
    with FakeOpenAIServer(recorder) as server:
        procs = [worker(server.base_url, db, N // 2 + 5) for _ in range(2)]
        for proc in procs:
            proc.communicate(timeout=300)
        return row(OUT_OF_PROCESS[0] + f" (cap {N // 2 + 5})", recorder, len(server.requests), db, N // 2 + 5, None)


def kill_and_restart(tmp: Path) -> dict:
    slow = {"on": True}
    recorder = Recorder(lambda req, first: good(req, delay_s=30 if slow["on"] and req.index >= 6 else 0))
    db = tmp / "kill.sqlite"
    with FakeOpenAIServer(recorder) as server:
        proc = worker(server.base_url, db, N)
        while len(server.requests) < 6 + CONCURRENCY:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        slow["on"] = False  # replies held back for the killed process never went out: not labels sent
        worker(server.base_url, db, N).communicate(timeout=300)
        return row(OUT_OF_PROCESS[1], recorder, len(server.requests), db, N, None)


def disk_full(tmp: Path) -> dict:
    """The ledger file may not grow for the whole batch; the next open commits what was spilled."""
    recorder, db = Recorder(lambda req, first: good(req, reasoning="x" * 20_000)), tmp / "full.sqlite"
    with FakeOpenAIServer(recorder) as server:
        judge = LLMJudge(server.base_url, model="critic", max_concurrency=CONCURRENCY, max_tokens=64)
        ledger = LabelLedger(db, max_labels=N, persist_retry_s=1.0)
        conn = ledger._db._db
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        ledger.label(judge, [(f"item-{i}", ["a", "b", "c"]) for i in range(N)])
        ledger.close()
        LabelLedger(db, max_labels=N).close()  # room again: the spill file is committed at start-up
        return row(OUT_OF_PROCESS[2], recorder, len(server.requests), db, N, None)


def locked(tmp: Path) -> dict:
    """Another process takes the write lock for 3 s while the first replies are on their way."""
    db, holder, lock = tmp / "locked.sqlite", [], threading.Lock()

    def script(req, first):
        with lock:
            if not holder:
                holder.append(subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(db), "3"],
                                               stdout=subprocess.PIPE, text=True))
                assert holder[0].stdout.readline().strip() == "locked"
        return good(req, delay_s=0.2)
    recorder = Recorder(script)
    try:
        with FakeOpenAIServer(recorder) as server, LabelLedger(db, max_labels=N, busy_timeout_s=1.0) as ledger:
            judge = LLMJudge(server.base_url, model="critic", max_concurrency=CONCURRENCY, max_tokens=64)
            ledger.label(judge, [(f"item-{i}", ["a", "b", "c"]) for i in range(N)])
            return row(OUT_OF_PROCESS[3], recorder, len(server.requests), db, N, None)
    finally:
        for proc in holder:
            proc.wait()


def second_run(tmp: Path) -> dict:
    """Two labelling runs on one out_dir at once: the second fails at once naming the first."""
    recorder, db, out = Recorder(lambda req, first: good(req, delay_s=3)), tmp / "second.sqlite", tmp / "out"
    with FakeOpenAIServer(recorder) as server:
        args = [server.base_url, str(db), str(N), str(N), str(out)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        first = subprocess.Popen([sys.executable, "-c", WORKER, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        while not server.requests and first.poll() is None:
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-c", WORKER, *args], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=300)
        first.communicate(timeout=300)
        refused = second.returncode != 0 and "is in use by another run (pid" in second.stderr
        print(f"  second run: {'refused at once' if refused else 'NOT refused'}", file=sys.stderr)
        return row(OUT_OF_PROCESS[4] + (" (refused)" if refused else " (NOT refused)"), recorder,
                   len(server.requests), db, N, None)


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in FAULTS:
            rows.append(in_process(name, Path(tmp)))
            print(f"  {name}: done", file=sys.stderr, flush=True)
        rows.append(two_processes(Path(tmp)))
        rows.append(kill_and_restart(Path(tmp)))
        rows += served_critic_rows(Path(tmp))
        for fault in (disk_full, locked, second_run):
            rows.append(fault(Path(tmp)))
            print(f"  {fault.__name__}: done", file=sys.stderr, flush=True)
    print(f"{N} items, {CONCURRENCY} requests in flight, max_retries=2, timeout_s=0.5, deadline_s=1.5\n")
    print("| fault injected | requests made | labels committed | labels lost | labels paid twice | budget overshoot "
          "| items |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fault']} | {r['requests']} | {r['committed']} | {r['lost']} | {r['twice']} | {r['overshoot']} "
              f"| {r['items']} |")


if __name__ == "__main__":
    main()
