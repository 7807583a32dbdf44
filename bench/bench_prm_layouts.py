"""PRM training step time by batch layout (prm.batch_layout): padded vs bucketed vs packed, same batches.

SmolLM2-135M-Instruct, full fine-tune mode (K = 32), fp32, one forward + backward per batch of the first
--n trajectories of the TRL-peer pool (bench_trl_peer.load_slice), layouts interleaved batch by batch so
the machine's load hits each alike. Prints seconds per layout, the ratio to padded, and the pad fraction.

    python -m bench.bench_prm_layouts --n 16 --batch-size 4
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from bench.bench_trl_peer import load_slice
from prm.config import PRMConfig
from prm.model import EnsemblePRM

LAYOUTS = ("padded", "bucketed", "packed")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--pool", default="outputs/bench_prm/pool.jsonl")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.cut_after_error = True
    pool = load_slice(args)
    prm = EnsemblePRM(PRMConfig(num_heads=32, train_mode="full", max_length=384))
    enc = [prm.encode(t.question, t.steps, 384) for t in pool]
    seconds = {k: 0.0 for k in LAYOUTS}
    slots = {k: 0 for k in LAYOUTS}
    real = 0
    for i in range(0, len(enc), args.batch_size):
        chunk = enc[i: i + args.batch_size]
        real += sum(len(ids) for ids, _ in chunk)
        for layout in LAYOUTS:
            batch = prm.collate(chunk, layout=layout)
            slots[layout] += batch.total_tokens
            start = time.perf_counter()
            logits, penalty = prm(batch)
            (logits.sum() + penalty).backward()
            seconds[layout] += time.perf_counter() - start
            prm.zero_grad(set_to_none=True)
    out = {k: {"seconds": seconds[k], "vs_padded": seconds["padded"] / seconds[k], "pad_fraction": 1 - real / slots[k]}
           for k in LAYOUTS}
    print(json.dumps({"n": len(enc), "batch_size": args.batch_size, "real_tokens": real, "layouts": out}, indent=2))


if __name__ == "__main__":
    main()
