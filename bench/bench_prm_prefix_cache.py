"""PRM scoring in step-wise search: prefix-cached (prm.prefix_cache) vs full passes (EnsemblePRM.score).

Replays the access pattern of beam search on real policy samples: round t scores every solution's
first t steps, so each round's sequences extend the last round's by one step. Both scorers run in
one process on the same rounds; the table gives seconds, the ratio, backbone tokens and the largest
score difference.

    python -m bench.bench_prm_prefix_cache --prm outputs/prm_pool_gsm8k/prm \\
        --records outputs/bench_search/gsm8k/records/best_of_n-n16-seed0.jsonl --problems 10 --samples 8
"""
from __future__ import annotations

import argparse
import json
import time

from core.steps import split_steps
from prm.config import PRMConfig
from prm.model import EnsemblePRM
from prm.prefix_cache import PrefixCachedScorer


def rounds(records: list[dict], samples: int):
    """[(questions, prefixes)] per depth t = 1..max steps: every solution with >= t steps, cut at t."""
    items = [(r["question"], split_steps(s["text"])) for r in records for s in r["solutions"][:samples]]
    depth = max(len(steps) for _, steps in items)
    return [([q for q, s in items if len(s) >= t], [s[:t] for _, s in items if len(s) >= t])
            for t in range(1, depth + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prm", required=True, help="a PRM dir saved by python -m prm.train")
    parser.add_argument("--records", required=True, help="an rl.search best_of_n record file (policy samples)")
    parser.add_argument("--problems", type=int, default=10)
    parser.add_argument("--samples", type=int, default=8, help="solutions per problem (beams)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with open(args.records) as fh:
        records = [json.loads(line) for line in fh][: args.problems]
    prm = EnsemblePRM.from_config(PRMConfig(path=args.prm, batch_size=args.batch_size))
    calls = rounds(records, args.samples)
    cached = PrefixCachedScorer(prm, batch_size=args.batch_size)
    seconds = {"full": 0.0, "cached": 0.0}
    worst, full_tokens = 0.0, 0
    for questions, prefixes in calls:
        start = time.perf_counter()
        want = prm.score(questions, prefixes)
        seconds["full"] += time.perf_counter() - start
        start = time.perf_counter()
        got = cached(questions, prefixes)
        seconds["cached"] += time.perf_counter() - start
        full_tokens += sum(len(prm.encode(q, s)[0]) for q, s in zip(questions, prefixes))
        worst = max([worst] + [abs(a - b) for g, w in zip(got, want) for a, b in zip(g.mean + g.std, w.mean + w.std)])
        print(f"depth {len(prefixes[0])}: {len(prefixes)} sequences", flush=True)
    print(f"\n| scorer | seconds | backbone tokens | speed-up |\n|---|---:|---:|---:|\n"
          f"| EnsemblePRM.score (full passes) | {seconds['full']:.1f} | {full_tokens} | 1.00x |\n"
          f"| PrefixCachedScorer | {seconds['cached']:.1f} | {cached.tokens_run} | "
          f"**{seconds['full'] / seconds['cached']:.2f}x** |\n\n"
          f"{len(records)} problems x {args.samples} solutions, {len(calls)} rounds, "
          f"{sum(len(p) for _, p in calls)} sequences; largest |score difference| {worst:.2e}")


if __name__ == "__main__":
    main()
