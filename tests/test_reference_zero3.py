"""The reference model of a full fine-tune with a KL term: under ZeRO-3 it is a DeepSpeed-initialised model
partitioned like the policy (not a full replica on every GPU), and its log-probs equal the initial policy's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.config import TrainerConfig
from rl.config import AlgoConfig, PolicyConfig
from rl.policy import PolicyTrainer, Sample
from tests.fake_openai_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_reference_is_partitioned_under_zero3_and_scores_like_the_initial_policy():
    policy = PolicyTrainer(PolicyConfig(model="tiny-random-llama", dtype="fp32", train_mode="full", device="cpu",
                                        zero_stage=3), AlgoConfig(kl_coef=0.1, micro_batch_size=2),
                           TrainerConfig(deepspeed=True, seed=3))
    assert all(hasattr(p, "ds_id") for p in policy.reference.parameters())          # partitioned by DeepSpeed
    assert all(p.numel() == 0 for p in policy.reference.parameters())              # nothing held outside a gather
    samples = [Sample([1, 5, 9, 14], [20, 21, 22]), Sample([3, 4], [7, 8, 9, 10])]
    want = policy.logprobs(samples)                       # the policy before any update: the reference's weights
    got = policy.logprobs(samples, reference=True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_two_ranks_hold_half_the_reference_each_and_score_like_the_initial_policy(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")},
           "OMP_NUM_THREADS": "1", "PROBE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "-m", "tests.reference_zero3_probe"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=420, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    r0, r1 = (json.loads((tmp_path / f"reference_rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["samples"], r1["samples"]) == (3, 1)
    for r in (r0, r1):
        assert r["partitioned"] and r["max_diff"] == 0.0, r
        assert r["held"] <= r["full"] / 2 + 64 * len(str(r["full"])), r   # each rank holds its half (+ padding)
