"""Judge phase wall time vs requests in flight (bench/RESULTS.md), side by side in one run.

N items through the ledger and the llm judge against the tests' scripted OpenAI-compatible server
answering every request after a fixed latency (real HTTP on 127.0.0.1):

    python -m bench.bench_judge_concurrency                      # N=32, latency 2 s, 1 / 8 / 64 in flight
    python -m bench.bench_judge_concurrency --items 64 --latency 1
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

from judges import LabelLedger, LLMJudge
from tests.fake_openai_server import FakeOpenAIServer, Reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.in_flight:
            items = [(f"run {c} item {i}", ["2 + 2 = 4", "So 4."]) for i in range(args.items)]
            with FakeOpenAIServer([Reply(delay_s=args.latency)]) as server, \
                    LabelLedger(Path(tmp) / f"c{c}.sqlite") as ledger:
                judge = LLMJudge(server.base_url, model="critic", max_concurrency=c, timeout_s=60)
                start = time.perf_counter()
                verdicts = ledger.label(judge, items)
                wall = time.perf_counter() - start
                assert all(v is not None and v.valid for v in verdicts)
                rows.append((c, wall, math.ceil(args.items / c) * args.latency, server.max_in_flight,
                             len(server.connections), len(server.requests)))
            print(f"  {c} in flight: {wall:.1f} s", file=sys.stderr, flush=True)
    base = rows[0][1]
    print(f"{args.items} items, server latency {args.latency} s\n")
    print("| requests in flight | wall time (s) | ceil(N/C) x latency (s) | speed-up vs first row | peak in flight at "
          "server | connections opened | requests |")
    print("|---|---|---|---|---|---|---|")
    for c, wall, ideal, peak, conns, reqs in rows:
        print(f"| {c} | {wall:.1f} | {ideal:.0f} | {base / wall:.1f}x | {peak} | {conns} | {reqs} |")


if __name__ == "__main__":
    main()
