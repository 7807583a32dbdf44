"""Run under torchrun by tests/test_rl_distributed.py: a ZeRO-3 PolicyTrainer on every rank takes one PPO
step on its half of a batch, then streams its weights (weights_for_sync); rank 0 compares what was
delivered with an unsharded single-process trainer that took the step on the whole batch.
Writes $PROBE_DIR/zero3_{mode}_rank{r}.json. Usage: python -m tests.zero3_sync_probe <full|lora>

How far apart the two may be follows from the computation, not from one machine's run (step_bound):
the sharded and the unsharded gradient are the same sums in another order (micro-batch composition,
padding, the all-reduce), so an element's gradient may differ by delta = gamma_K * A, where A sums the
absolute per-sample gradients (the terms) and gamma_K = K u / (1 - K u) is the forward error bound of
a K-term fp32 reduction (Higham, Accuracy and Stability of Numerical Algorithms, 3.1), K the longest
reduction of the forward and backward. AdamW's first step moves an element by lr * f(g), f(x) = x / (|x| +
eps), so it moves by at most lr * delta * eps / (max(|g| - delta, 0) + eps)^2 more or less (f's slope on
that interval), capped at 2 lr: an element whose gradient is within rounding of 0 may go either way,
one whose gradient stands clear of it must match to rounding.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from core.config import TrainerConfig
from rl.config import AlgoConfig, PolicyConfig
from core.distributed import Ranks
from rl.policy import PolicyTrainer, Sample

U32 = 2.0 ** -24  # fp32 unit roundoff


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


def step_bound(policy: PolicyConfig, algo: AlgoConfig, samples: list[Sample]) -> dict[str, torch.Tensor]:
    """Per trainable parameter (named as in named_parameters), the most one AdamW step taken on the
    gradient of `samples` may differ between two fp32 summation orders (the module docstring)."""
    init = PolicyTrainer(policy, algo, TrainerConfig(deepspeed=False))  # the weights before the step
    params = {n: p for n, p in init.model.named_parameters() if p.requires_grad}
    for s, logp in zip(samples, init.logprobs(samples, passes=2)):
        s.old_logprobs = logp.detach()
    num_tokens = sum(len(s.completion_ids) for s in samples)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    terms = {n: torch.zeros_like(p) for n, p in params.items()}
    for s in samples:  # the finest split: the sum of |per-sample gradient| bounds every coarser one's
        loss, _ = init._chunk_loss(init.model, [s], num_tokens)
        for (n, _p), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
            if g is not None:
                total[n] += g.double()
                terms[n] += g.double().abs()
    norm = torch.sqrt(sum((t ** 2).sum() for t in total.values()))
    clip = min(1.0, policy.grad_clip / (float(norm) + 1e-6))  # clip_grad_norm_'s coefficient
    config = init.model.config
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    k = config.vocab_size + config.intermediate_size + config.hidden_size + tokens
    gamma = k * U32 / (1 - k * U32)
    eps, lr = 1e-8, policy.lr  # torch.optim.AdamW's default eps; the trainer sets only lr and decay
    bounds = {}
    for n in params:
        g, delta = (total[n] * clip).abs(), gamma * terms[n] * clip
        slope = delta * eps / ((g - delta).clamp(min=0) + eps) ** 2
        bounds[n] = (lr * slope.clamp(max=2.0)).float()
    return bounds


def delivered_bound(trainer: PolicyTrainer, bounds: dict[str, torch.Tensor], mode: str) -> dict[str, torch.Tensor]:
    """The step bounds in the names and shapes weights_for_sync delivers, plus the rounding of the
    delivered value itself: a few u of the larger of the weight before and after a step of at most 2 lr
    (a LoRA merge W + s B A: u K of its terms)."""
    model, lr = trainer.model, trainer.cfg.lr
    out = {}
    if mode == "full":
        by_tensor = {p.data_ptr(): bounds[n] for n, p in model.named_parameters() if n in bounds}
        for name, t in trainer.weights_for_sync():
            out[name] = by_tensor.get(t.data_ptr(), torch.zeros_like(t)) + 4 * U32 * (t.abs() + 2 * lr)
        return out
    base = model.get_base_model()
    for name, module in base.named_modules():
        if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):
            adapter = module.active_adapters[0]
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            scale = module.scaling[adapter]
            bound_b = next(v for n, v in bounds.items() if n.endswith(f"{name}.lora_B.{adapter}.weight"))
            merged = module.base_layer.weight.abs() + scale * (b.abs() @ a.abs())
            out[f"{name}.weight"] = scale * (bound_b @ a.abs()) + (a.shape[0] + 4) * U32 * (merged + 2 * lr)
    for name, t in trainer.weights_for_sync():
        out.setdefault(name, 4 * U32 * (t.abs() + 2 * lr))
    return out


def main(mode: str) -> None:
    ranks = Ranks.from_env()
    policy = PolicyConfig(model="tiny-random-llama", dtype="fp32", train_mode=mode, lr=1e-2, zero_stage=3,
                          lora_targets=["q_proj", "v_proj"])
    algo = AlgoConfig(mini_batch_size=8, micro_batch_size=2)
    sharded = PolicyTrainer(policy, algo, TrainerConfig(deepspeed=True))
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
        bound = delivered_bound(reference, step_bound(policy, algo, batch(reference.tokenizer)), mode)
        base = reference.model.get_base_model() if mode == "lora" else reference.model
        shapes = {k: list(v.shape) for k, v in base.state_dict().items() if "lora_" not in k}
        record["expected_shapes"] = {k.replace(".base_layer", ""): v for k, v in shapes.items()}
        record["missing"] = sorted(set(expected) - set(delivered))
        record["max_diff"] = max(float((delivered[n] - t).abs().max()) for n, t in expected.items())
        # > 1 where the delivered tensor is further from the reference than the computation allows
        record["max_diff_over_bound"] = max(float(((delivered[n] - t).abs() / bound[n]).max())
                                            for n, t in expected.items())
        # the share of elements the bound leaves free to move a whole step: small, or the check is empty
        free = sum(int((bound[n] >= policy.lr).sum()) for n in expected)
        record["free_share"] = free / sum(t.numel() for t in expected.values())
        init = PolicyTrainer(policy, algo, TrainerConfig(deepspeed=False))
        record["moved"] = max(float((delivered[n] - t).abs().max()) for n, t in init.weights_for_sync())
    Path(os.environ["PROBE_DIR"], f"zero3_{mode}_rank{ranks.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
