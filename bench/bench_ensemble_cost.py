"""Ensemble cost (K = 32 must cost about K = 1): scoring time and peak memory of K = 32 vs K = 1 on the same items.

Each K runs in its OWN subprocess (so its peak RSS is its own: `resource.getrusage(RUSAGE_SELF).ru_maxrss`,
which sees torch's allocator, unlike tracemalloc). The two children run at the same time, one thread
each, so the shared machine's load hits both alike; each builds the same frozen SmolLM2 backbone, warms
up on 2 items, then scores the same items `--repeats` times (median reported).
Reported per K: median scoring seconds, peak RSS after building the model (before any scoring) and
peak RSS at the end (after scoring), and their difference (what scoring itself added at its peak).

    python -m bench.bench_ensemble_cost --items 8 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    from prm.config import PRMConfig
    from prm.data import load_processbench
    from prm.eval import spread_sample
    from prm.model import EnsemblePRM
    items = spread_sample(load_processbench("gsm8k"), args.items)
    qs, ss = [t.question for t in items], [t.steps for t in items]
    prm = EnsemblePRM(PRMConfig(backbone=args.backbone, dtype="fp32", num_heads=args.k, train_mode="frozen"))
    rss_built = maxrss_mib()
    prm.score(qs[:2], ss[:2], args.batch_size)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        prm.score(qs, ss, args.batch_size)
        times.append(time.perf_counter() - start)
    print(json.dumps({"k": args.k, "seconds": times, "rss_built_mib": rss_built, "rss_peak_mib": maxrss_mib(),
                      "steps": sum(len(s) for s in ss), "items": len(items),
                      "head_params": sum(p.numel() for p in prm.heads.parameters())}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="smollm2-135m-instruct")
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=None, help="internal: run one child")
    args = ap.parse_args()
    if args.k is not None:
        return child(args)
    base = [sys.executable, "-m", __spec__.name, "--backbone", args.backbone, "--items", str(args.items), "--repeats",
            str(args.repeats), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    procs = {k: subprocess.Popen(base + ["--k", str(k)], stdout=subprocess.PIPE, text=True) for k in (1, 32)}
    res = {}
    for k, p in procs.items():
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"child K={k} failed ({p.returncode})")
        res[k] = json.loads(out.strip().splitlines()[-1])
    med = {k: statistics.median(r["seconds"]) for k, r in res.items()}
    result = {"children": res, "seconds_median": med, "ratio_k32_over_k1": med[32] / med[1]}
    print(json.dumps(result, indent=2))
    r1 = res[1]
    print(f"\n| K | median s ({r1['items']} items, {r1['steps']} steps) | peak RSS after build MiB | "
          f"peak RSS after scoring MiB | scoring adds MiB | head params |\n|---|---|---|---|---|---|")
    for k in (1, 32):
        r = res[k]
        print(f"| {k} | {med[k]:.2f} | {r['rss_built_mib']:.0f} | {r['rss_peak_mib']:.0f} | "
              f"{r['rss_peak_mib'] - r['rss_built_mib']:.0f} | {r['head_params']:,} |")
    print(f"ratio K32/K1 time = {med[32] / med[1]:.3f}; peak RSS K32 - K1 = "
          f"{res[32]['rss_peak_mib'] - res[1]['rss_peak_mib']:+.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
