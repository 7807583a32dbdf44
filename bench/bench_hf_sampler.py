"""HF rollout sampling: our inverse-CDF sampler vs transformers' own (torch.multinomial), side by side.

Same model, prompts, lengths and seeds; the two ways alternate per repetition so machine load hits both.
Both produce the same distribution (tests/test_rl_rollout.py); this measures the wall time of sampled
generation with SmolLM2-135M-Instruct (fp32) on this CPU.

    python -m bench.bench_hf_sampler [--rows 40] [--tokens 64] [--reps 3]
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import LogitsProcessorList

from core.models import load_model
from rl.rollout import InverseCDFSampler, RecordLogprobs
from tasks.registry import ARITHMETIC_SYSTEM_PROMPT, format_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40, help="sequences per generate call")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m-instruct", "fp32")
    model.eval()
    prompt = format_prompt(tok, "What is (3 + 4) * 2?", ARITHMETIC_SYSTEM_PROMPT)

    tok.padding_side = "left"
    enc = tok([prompt] * args.rows, return_tensors="pt", padding=True, add_special_tokens=False)
    ways = {   # fresh processors per call; the first is what HFRollout did before: do_sample=True + the recorder
        "transformers (multinomial)": lambda: dict(do_sample=True, temperature=0.8, top_p=1.0,
                                                   processors=[RecordLogprobs()]),
        "ours (inverse CDF)": lambda: dict(do_sample=False, temperature=None, top_p=None,
                                           processors=[RecordLogprobs(), InverseCDFSampler(0.8, 1.0)]),
    }
    times = {name: [] for name in ways}
    for rep in range(args.reps + 1):            # rep 0 warms up both
        for name, sampling in ways.items():
            kw = sampling()
            torch.manual_seed(rep)
            start = time.perf_counter()
            with torch.no_grad():
                model.generate(**enc, max_new_tokens=args.tokens, min_new_tokens=args.tokens, top_k=None,
                               do_sample=kw["do_sample"], temperature=kw["temperature"], top_p=kw["top_p"],
                               logits_processor=LogitsProcessorList(kw["processors"]),
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            if rep:
                times[name].append(time.perf_counter() - start)
    tokens = args.rows * args.tokens
    base = min(times["transformers (multinomial)"])
    print(f"| sampler | best of {args.reps} (s) | tokens/s | speed-up |\n|---|---:|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.2f} | {tokens / min(ts):.0f} | {base / min(ts):.2f}x |")
    print(f"({args.rows} rows x {args.tokens} tokens, torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
