"""Data-parallel rl.online: 1 vs 2 ranks (torchrun, gloo, CPU) on the same global batch, round time by phase.

    python -m bench.bench_scaleout --rounds 3 --prompts 8 --n 4 --max-new-tokens 32 --out bench/scaleout.json

Runs the same hydra command under `torchrun --nproc_per_node 1` and `--nproc_per_node 2` one after the
other (tiny-random-llama policy and PRM, HF rollout, rule judge) and reads rank 0's metrics.jsonl:
a phase's time is the slowest rank's. Round 1 is left out (warm-up). On a CPU the two ranks share the
machine's cores, so this measures the plumbing's overhead and the per-rank work split, not a speed-up
that needs one device per rank.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.fake_openai_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def run(ranks: int, args, out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(free_port()),
           "-m", "rl.online", "policy=tiny", "prm=tiny", f"rounds={args.rounds}", f"rollout.n={args.n}",
           f"rollout.max_new_tokens={args.max_new_tokens}", f"task.prompts_per_round={args.prompts}",
           "algo.filter_groups=false", "select.mode=all", "trainer.progress=false", "plot=false",
           f"trainer.out_dir={out}", f"hydra.run.dir={out}/hydra"]
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")},
           "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", default="bench/scaleout.json")
    args = ap.parse_args()
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in (1, 2):
            rounds = run(ranks, args, Path(tmp) / f"r{ranks}")[1:]
            phases = [k for k in rounds[0] if k.startswith("timing/")]
            table[ranks] = {k.removeprefix("timing/"): statistics.mean(r[k] for r in rounds) for k in phases}
    print(f"{'phase':<16}{'1 rank s':>10}{'2 ranks s':>11}{'2/1':>7}")
    for phase in table[1]:
        a, b = table[1][phase], table[2].get(phase, float("nan"))
        print(f"{phase:<16}{a:>10.2f}{b:>11.2f}{b / a if a else float('nan'):>9.2f}")
    Path(args.out).write_text(json.dumps({"args": vars(args), "seconds_by_phase": table}, indent=1))


if __name__ == "__main__":
    main()
