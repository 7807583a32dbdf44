"""Run under torchrun by tests/test_rl_distributed.py: a ZeRO-3 PolicyTrainer on every rank takes one PPO
step on its half of a batch, then streams its weights (weights_for_sync); rank 0 compares what was
delivered with an unsharded single-process trainer that took the step on the whole batch.
Writes $PROBE_DIR/zero3_rank{r}.json. Usage: python -m tests.zero3_sync_probe <full|lora>
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from prm.config import TrainerConfig
from rl.config import AlgoConfig, PolicyConfig
from rl.distributed import Ranks
from rl.policy import PolicyTrainer, Sample


def batch(tokenizer) -> list[Sample]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(8):
        prompt = tokenizer(f"What is {i} + {i}?", add_special_tokens=False)["input_ids"]
        completion = torch.randint(5, 500, (3 + i % 4,), generator=g).tolist()
        out.append(Sample(prompt, completion, torch.randn(len(completion), generator=g)))
    return out


def step(trainer: PolicyTrainer, samples: list[Sample], ranks: Ranks, lengths) -> None:
    for s, logp in zip(samples, trainer.logprobs(samples, passes=2)):
        s.old_logprobs = logp.detach()
    trainer.update(samples, torch.Generator().manual_seed(1), ranks, lengths)


def main(mode: str) -> None:
    ranks = Ranks.from_env()
    policy = PolicyConfig(model="tiny-random-llama", dtype="fp32", train_mode=mode, lr=1e-2, zero_stage=3,
                          lora_targets=["q_proj", "v_proj"])
    algo = AlgoConfig(mini_batch_size=8, micro_batch_size=2)
    sharded = PolicyTrainer(policy, algo, TrainerConfig(deepspeed=True, zero_stage=3))
    whole = batch(sharded.tokenizer)
    mine = ranks.shard(whole)
    lengths = ranks.gather([len(s.completion_ids) for s in mine])
    step(sharded, mine, ranks, lengths)
    delivered = {name: tensor.detach().clone() for name, tensor in sharded.weights_for_sync()}
    record = {"names": len(delivered), "shapes": {n: list(t.shape) for n, t in delivered.items()},
              "sum": float(sum(t.double().sum() for t in delivered.values()))}
    if ranks.is_main:  # the reference: one process, no DeepSpeed, the whole batch, the same step
        reference = PolicyTrainer(policy, algo, TrainerConfig(deepspeed=False))
        step(reference, batch(reference.tokenizer), Ranks(), None)
        expected = dict(reference.weights_for_sync())
        base = reference.model.get_base_model() if mode == "lora" else reference.model
        shapes = {k: list(v.shape) for k, v in base.state_dict().items() if "lora_" not in k}
        record["expected_shapes"] = {k.replace(".base_layer", ""): v for k, v in shapes.items()}
        record["max_diff"] = max(float((delivered[n] - t).abs().max()) for n, t in expected.items())
        record["missing"] = sorted(set(expected) - set(delivered))
        init = PolicyTrainer(policy, algo, TrainerConfig(deepspeed=False))
        record["moved"] = max(float((delivered[n] - t).abs().max()) for n, t in init.weights_for_sync())
    Path(os.environ["PROBE_DIR"], f"zero3_{mode}_rank{ranks.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
