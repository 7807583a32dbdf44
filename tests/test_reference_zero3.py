"""The reference model of a full fine-tune with a KL term: under ZeRO-3 it is a DeepSpeed-initialised model
partitioned like the policy (not a full replica on every GPU), and its log-probs equal the initial policy's."""
from __future__ import annotations

import torch

from core.config import TrainerConfig
from rl.config import AlgoConfig, PolicyConfig
from rl.policy import PolicyTrainer, Sample


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
