"""Run under torchrun by tests/test_reference_zero3.py: a ZeRO-3 PolicyTrainer with a KL term on every rank;
each rank scores its own samples (unequal counts: stand-in passes keep the gathers in step) with the reference
model and compares them with an unsharded trainer's log-probs of the same samples, in the same micro-batches.
Writes $PROBE_DIR/reference_rank{r}.json. Usage: python -m tests.reference_zero3_probe"""
from __future__ import annotations

import json
import os
from pathlib import Path

from core.config import TrainerConfig
from core.distributed import Ranks
from rl.config import AlgoConfig, PolicyConfig
from rl.policy import PolicyTrainer, Sample

if __name__ == "__main__":
    ranks = Ranks.from_env()
    policy = PolicyConfig(model="tiny-random-llama", dtype="fp32", train_mode="full", device="cpu", zero_stage=3)
    algo = AlgoConfig(kl_coef=0.1, micro_batch_size=2)
    sharded = PolicyTrainer(policy, algo, TrainerConfig(deepspeed=True, seed=3))
    mine = [Sample([1, 5, 9, 14], [20, 21, 22]), Sample([3, 4], [7, 8, 9, 10]), Sample([2], [6, 6])][:3 - 2 * ranks.rank]
    got = sharded.logprobs(mine, reference=True, passes=2)   # rank 0: 2 micro-batches, rank 1: 1 + a stand-in
    plain = PolicyTrainer(policy, algo, TrainerConfig(deepspeed=False, seed=3))
    want = plain.logprobs(mine)
    params = list(sharded.reference.parameters())
    out = {"max_diff": max(float((a - b).abs().max()) for a, b in zip(got, want)), "samples": len(mine),
           "partitioned": all(hasattr(p, "ds_id") for p in params),
           "held": sum(p.ds_tensor.numel() for p in params), "full": sum(p.ds_numel for p in params)}
    Path(os.environ["PROBE_DIR"], f"reference_rank{ranks.rank}.json").write_text(json.dumps(out))
