"""Round wall time, serial vs overlap schedule (rl.schedule), same seed, with a slow judge.

The judge is judges.llm over real HTTP against tests/fake_openai_server.FakeOpenAIServer, which answers
every request ("no error") after --latency seconds; --concurrency requests in flight; select.mode=all so
every rollout is judged each round. Policy and PRM: tiny-random-llama (full fine-tune), so the judge is
the slow phase, as with a served reasoning judge. Both schedules run in this one process, alternating
(serial, overlap) x --repeats, each a fresh run (own ledger: no label comes free) of --rounds rounds from
the same seed; their metrics must agree exactly (checked), only the time may differ.

    python -m bench.bench_overlap --rounds 4 --latency 1 --concurrency 8 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from core.config import TrainerConfig
from prm.config import PRMConfig
from rl.config import (
    AlgoConfig,
    OnlineConfig,
    PolicyConfig,
    RolloutConfig,
    SelectConfig,
    TaskConfig,
)
from rl.online import build
from rl.schedule import run_rounds
from tests.fake_openai_server import FakeOpenAIServer, Reply

PHASES = ("generate", "verify", "score", "select", "judge", "prm_update", "advantage", "policy_update",
          "weight_sync", "wait_prm")


def config(args, out_dir: str, url: str, schedule: str) -> OnlineConfig:
    return OnlineConfig(
        rounds=args.rounds, plot=False, schedule=schedule,
        policy=PolicyConfig(model="tiny-random-llama", dtype="fp32", train_mode="full", lr=1e-3),
        rollout=RolloutConfig(n=args.n, max_new_tokens=args.max_new_tokens, batch_size=32),
        algo=AlgoConfig(filter_groups=False, mini_batch_size=16, micro_batch_size=8),
        task=TaskConfig(prompts_per_round=args.prompts, size=200),
        select=SelectConfig(mode="all"),
        prm=PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=4, batch_size=8, head_lr=1e-2,
                      train_mode="full", update_steps=args.prm_steps),
        judge={"name": "llm", "base_url": url, "max_concurrency": args.concurrency, "max_retries": 0},
        trainer=TrainerConfig(out_dir=out_dir, resume="never", progress=False, seed=0))


def one_run(args, url: str, schedule: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        loop, _ = build(config(args, tmp, url, schedule))
        start = time.perf_counter()
        done = list(run_rounds(loop, range(1, args.rounds + 1), schedule))
        wall = time.perf_counter() - start
        loop.checker.close()
    rounds = [d.metrics for d in done]
    return {"wall": wall, "round_wall": [m["timing/round"] for m in rounds],
            "busy": {p: sum(m.get(f"timing/{p}", 0.0) for m in rounds) for p in PHASES},
            "labels": sum(m["judge/labels"] for m in rounds), "judge_calls": sum(m["judge/calls"] for m in rounds),
            "comparable": [{k: v for k, v in m.items() if not k.startswith(("timing/", "judge/seconds", "sync/seconds"))}
                           for m in rounds]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--latency", type=float, default=1.0, help="seconds the fake judge server takes per request")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--prm-steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="outputs/bench_overlap/result.json")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"serial": [], "overlap": []}
    with FakeOpenAIServer([Reply(content="\\boxed{-1}", delay_s=args.latency)]) as server:
        for _ in range(args.repeats):
            for schedule in runs:
                runs[schedule].append(one_run(args, server.base_url, schedule))
                print(f"{schedule}: {runs[schedule][-1]['wall']:.1f} s", flush=True)
    same = all(r["comparable"] == runs["serial"][0]["comparable"] for rs in runs.values() for r in rs)
    walls = {s: [r["wall"] for r in rs] for s, rs in runs.items()}
    result = {"args": vars(args), "identical_metrics": same, "wall": walls,
              "serial_over_overlap": statistics.mean(walls["serial"]) / statistics.mean(walls["overlap"]),
              "round_wall_mean": {s: statistics.mean(w for r in rs for w in r["round_wall"]) for s, rs in runs.items()},
              "busy_per_run": {s: {p: statistics.mean(r["busy"][p] for r in rs) for p in PHASES} for s, rs in runs.items()},
              "labels_per_run": runs["serial"][0]["labels"], "judge_calls_per_run": runs["serial"][0]["judge_calls"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "args"}, indent=2))
    print("\n| schedule | run wall s (each repeat) | mean round wall s | busy s per run: " + " / ".join(PHASES) + " |")
    print("|---|---|---|---|")
    for s in runs:
        busy = " / ".join(f"{result['busy_per_run'][s][p]:.1f}" for p in PHASES)
        print(f"| {s} | {', '.join(f'{w:.1f}' for w in walls[s])} | {result['round_wall_mean'][s]:.2f} | {busy} |")
    print(f"serial / overlap wall = {result['serial_over_overlap']:.2f}; identical metrics: {same}")


if __name__ == "__main__":
    main()
