"""Ensemble cost (DESIGN.md §7): scoring time and peak memory of K = 32 vs K = 1 on the same items.

Both PRMs share one backbone object (the heads are the only difference), the items are the same,
and the two are timed alternately (K=1, K=32, K=1, K=32 ...) so machine load hits both alike.
    python bench/bench_ensemble_cost.py --items 16 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc

import torch

from prm.config import PRMConfig
from prm.data import load_processbench
from prm.eval import spread_sample
from prm.model import EnsembleHeads, EnsemblePRM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="smollm2-135m-instruct")
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items = spread_sample(load_processbench("gsm8k"), args.items)
    qs, ss = [t.question for t in items], [t.steps for t in items]
    prm = EnsemblePRM(PRMConfig(backbone=args.backbone, dtype="fp32", num_heads=32, train_mode="frozen"))
    heads = {32: prm.heads, 1: EnsembleHeads(1, prm.hidden_size, 128)}
    prm.score(qs[:2], ss[:2], args.batch_size)  # warm-up
    times: dict[int, list[float]] = {1: [], 32: []}
    peak: dict[int, float] = {}
    for _ in range(args.repeats):
        for k in (1, 32):
            prm.heads = heads[k]
            tracemalloc.start()
            start = time.perf_counter()
            prm.score(qs, ss, args.batch_size)
            times[k].append(time.perf_counter() - start)
            peak[k] = max(peak.get(k, 0.0), tracemalloc.get_traced_memory()[1] / 2 ** 20)
            tracemalloc.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    steps = sum(len(s) for s in ss)
    result = {"items": len(items), "steps": steps, "repeats": args.repeats, "seconds_median": med,
              "seconds_all": times, "ratio_k32_over_k1": med[32] / med[1], "peak_python_alloc_mib": peak,
              "heads_params": {k: sum(p.numel() for p in h.parameters()) for k, h in heads.items()}}
    print(json.dumps(result, indent=2))
    print(f"\n| K | median s ({len(items)} items, {steps} steps) | peak traced MiB |\n|---|---|---|")
    for k in (1, 32):
        print(f"| {k} | {med[k]:.3f} | {peak[k]:.1f} |")
    print(f"ratio K32/K1 = {med[32] / med[1]:.3f}")


if __name__ == "__main__":
    main()
