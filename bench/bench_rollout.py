"""HF generate vs vLLM(-cpu) rollout on the same prompts: tokens/s, weight-sync time, parity gap.
`--backends hf,hf-static` compares HF generate's two KV caches (rollout.hf_kv_cache) instead.

    python -m bench.bench_rollout --prompts 16 --n 4 --max-new-tokens 64 --out bench/rollout.json

Both backends run SmolLM2-135M-Instruct (--dtype, fp32 default: see configs/policy/smollm2_full.yaml) on the arithmetic task's chat prompts, sampled at the
online default (T=0.7) and greedy. Weight sync = push the full policy (as after a policy update) into
the engine, then the parity check (engine vs trainer log-probs on a fixed completion).
"""
import argparse
import json
import time

import torch

from core.models import load_model, resolve_path
from rl.rollout import HFRollout, token_logprobs
from tasks.registry import (
    ARITHMETIC_SYSTEM_PROMPT,
    ArithmeticSpec,
    Task,
    arithmetic_chain,
    few_shot_for,
)


def timed_generate(backend, prompts, n, max_new_tokens, temperature) -> dict:
    start = time.perf_counter()
    groups = backend.generate(prompts, n, max_new_tokens, temperature, 1.0)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    return {"temperature": temperature, "completions": len(prompts) * n, "tokens": tokens,
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backends", default="hf,vllm")
    ap.add_argument("--dtype", default="fp32", help="fp32 on CPUs without AVX512-BF16, bf16 elsewhere")
    ap.add_argument("--out", default="bench/rollout.json")
    args = ap.parse_args()
    model, tok = load_model("smollm2-135m-instruct", args.dtype)
    model.eval()
    task = Task("arithmetic", arithmetic_chain(0, args.prompts, ArithmeticSpec()), ARITHMETIC_SYSTEM_PROMPT,
                few_shot_for(ArithmeticSpec()))
    prompts = [task.prompt(tok, p.question) for p in task.problems]
    results = {"torch_threads": torch.get_num_threads(), "dtype": args.dtype, "prompts": args.prompts, "n": args.n,
               "max_new_tokens": args.max_new_tokens}
    trainer = lambda p, ids: token_logprobs(model, tok, p, ids)  # noqa: E731
    parity_prompt = task.prompt(tok, "What is 2 + 3?")
    for name in args.backends.split(","):
        if name in ("hf", "hf-static"):
            torch.manual_seed(0)
            backend = HFRollout(model, tok, batch_size=args.batch_size,
                                hf_kv_cache="static" if name == "hf-static" else "dynamic")
            start_s = 0.0
        else:
            from rl.vllm_rollout import VLLMRollout
            start = time.perf_counter()
            backend = VLLMRollout(str(resolve_path("smollm2-135m-instruct")), tok, seed=0, dtype=args.dtype)
            start_s = time.perf_counter() - start
        runs = [timed_generate(backend, prompts, args.n, args.max_new_tokens, t) for t in (0.7, 0.0)]
        results[name] = {"engine_start_s": round(start_s, 1), "runs": runs}
        print(json.dumps({name: results[name]}), flush=True)  # kept even if the sync below fails
        weights = None if name.startswith("hf") else [(k, v.clone()) for k, v in model.state_dict().items()]
        try:
            sync_s = backend.sync_weights(weights, version=1)
            start = time.perf_counter()
            gap = backend.parity_check(trainer, parity_prompt, "2 + 3 = 5\n\nThe answer is 5.", tolerance=0.2)
            results[name].update(weight_sync_s=round(sync_s, 3), parity_check_s=round(time.perf_counter() - start, 3),
                                 parity_gap=round(gap, 4))
        except Exception as err:  # noqa: BLE001 (a failed sync is a result to report)
            results[name]["weight_sync_error"] = str(err)[:300]
        print(json.dumps({name: results[name]}), flush=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":  # vLLM's engine starts with spawn
    main()
