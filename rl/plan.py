"""`python -m rl.plan`: the per-GPU memory plan of an rl.online config, offline, before anything loads.

    python -m rl.plan --config-name online_gpu plan.gpus=8 plan.gpu_memory_gb=80
    python -m rl.plan --config-name online_gpu policy.model=Qwen/Qwen2.5-7B-Instruct prm.backbone=Qwen/Qwen2.5-7B-Instruct plan.gpus=8 plan.gpu_memory_gb=80
It takes rl.online's overrides (the same config) plus `plan.gpus` and `plan.gpu_memory_gb`, prints one row per
item (weights, gradients, optimizer, reference, PRM, activations, logits, vLLM weights and KV cache) with
the setting that lowers it, and exits 0 when the peak fits the card, 2 when it does not (naming the largest
item and that setting). rl.online prints the same plan at start-up on cuda and refuses one over the
detected memory (`plan.check=false` starts anyway). The arithmetic: core/memory_plan.py.
"""
from __future__ import annotations

import os
import sys

from core.memory_plan import (DTYPE_BYTES, GB, Item, MemoryPlan, TrainedModel, activation_bytes, architecture,
                              head_params, logit_bytes)
from rl.config import OnlineConfig, PolicyTrainMode, RolloutBackendName

BOTH, TRAINING, GENERATION = ("training", "generation"), ("training",), ("generation",)
FITS, OVER = 0, 2


class MemoryPlanError(RuntimeError):
    pass


def policy_model(cfg: OnlineConfig) -> TrainedModel:
    zero = cfg.policy.zero_stage if cfg.trainer.deepspeed else 0
    return TrainedModel(architecture(cfg.policy.model, "policy.model"), cfg.policy.dtype, str(cfg.policy.train_mode),
                        zero, cfg.policy.lora_r, list(cfg.policy.lora_targets))


def policy_items(cfg: OnlineConfig, policy: TrainedModel, gpus: int) -> list[Item]:
    fp32 = policy.bytes == 4
    weights_hint = ("policy.dtype=bf16" if fp32 else "policy.zero_stage=3 (partitions them over the ranks)"
                    if policy.zero_stage < 3 else "more GPUs (plan.gpus) or a smaller policy.model")
    items = [Item(f"policy weights ({policy.arch.params() / 1e9:.2f}B, {policy.dtype}, {policy.mode}, "
                  f"ZeRO-{policy.zero_stage})", policy.weights(gpus) / GB, BOTH, weights_hint)]
    if policy.trained_params():
        lora = "policy.train_mode=lora"
        items.append(Item("policy gradients", policy.gradients(gpus) / GB, BOTH,
                          "policy.zero_stage=2" if policy.zero_stage < 2 else lora if policy.mode == "full"
                          else "more GPUs (plan.gpus)"))
        items.append(Item("policy optimizer (fp32 master + AdamW moments)" if not fp32 else "policy optimizer (AdamW)",
                          policy.optimizer(gpus) / GB, BOTH,
                          "policy.zero_stage=2" if policy.zero_stage < 1 else lora if policy.mode == "full"
                          else "more GPUs (plan.gpus)"))
    if policy.mode == PolicyTrainMode.full and cfg.algo.kl_coef > 0:   # ZeRO-3: partitioned like the policy
        shards = gpus if policy.zero_stage == 3 else 1
        items.append(Item("reference model (frozen copy, kl_coef > 0)", policy.arch.params() * policy.bytes / shards / GB,
                          BOTH, "algo.kl_coef=0 (no reference), policy.train_mode=lora (the adapter disabled)"
                          + ("" if shards > 1 else " or policy.zero_stage=3 (partitions it)")))
    seq = cfg.plan.seq_tokens or cfg.rollout.max_model_len
    micro = cfg.algo.micro_batch_size
    items.append(Item(f"activations ({micro} x {seq} tokens, gradient checkpointing "
                      f"{'on' if cfg.policy.gradient_checkpointing else 'off'})",
                      activation_bytes(policy.arch, micro * seq, policy.bytes, cfg.policy.gradient_checkpointing) / GB,
                      TRAINING, "algo.micro_batch_size" if cfg.policy.gradient_checkpointing
                      else "policy.gradient_checkpointing=true"))
    positions = micro * (cfg.rollout.max_new_tokens + 1)
    items.append(Item(f"logits ({positions} positions x {policy.arch.vocab} vocabulary)",
                      logit_bytes(policy.arch, positions, policy.bytes) / GB, TRAINING,
                      "algo.micro_batch_size or rollout.max_new_tokens"))
    return items


def prm_items(cfg: OnlineConfig, gpus: int) -> list[Item]:
    p = cfg.prm
    zero = cfg.prm.zero_stage if cfg.trainer.deepspeed else 0
    prm = TrainedModel(architecture(p.backbone, "prm.backbone"), p.dtype, str(p.train_mode), zero, p.lora_r,
                       list(p.lora_targets))
    weights = prm.weights(gpus)
    if p.step_features == "hidden_policy_logprob" and prm.mode != "frozen":   # the frozen initial backbone
        weights += prm.arch.params() * prm.bytes
    hint = "prm.dtype=bf16" if prm.bytes == 4 else ("prm.zero_stage=3 (the PRM's; policy.zero_stage keeps the policy's)" if zero < 3
                                                     else "a smaller prm.backbone")
    heads = head_params(p.num_heads, prm.arch.hidden + (0 if p.step_features == "hidden" else 2), p.head_hidden)
    state = prm.gradients(gpus) + prm.optimizer(gpus) + heads * 20   # fp32 heads: weight, anchor, grad, AdamW
    return [Item(f"PRM backbone ({prm.arch.params() / 1e9:.2f}B, {p.dtype}, {p.train_mode})", weights / GB, BOTH, hint),
            Item(f"PRM training state ({p.num_heads} heads{'' if prm.mode == 'frozen' else ' + backbone'})",
                 state / GB, BOTH, "prm.train_mode=frozen" if prm.mode != "frozen" else "prm.num_heads")]


def vllm_items(cfg: OnlineConfig, policy: TrainedModel, gpu_memory_gb: float, plan_notes: list[str],
               problems: list[str]) -> list[Item]:
    r = cfg.rollout
    phases = GENERATION if r.sleep else BOTH
    engine_bytes = DTYPE_BYTES[r.dtype or cfg.policy.dtype]
    weights = policy.arch.params() * engine_bytes / r.tensor_parallel_size / GB
    budget = r.gpu_memory_utilization * gpu_memory_gb
    kv = budget - weights
    if kv <= 0:
        problems.append(f"rollout.gpu_memory_utilization={r.gpu_memory_utilization} gives the vLLM engine "
                        f"{budget:.1f} GB, not more than its {weights:.1f} GB of weights: no room for a KV cache; "
                        f"raise rollout.gpu_memory_utilization")
    else:
        tokens = int(kv * GB / policy.arch.kv_bytes_per_token(engine_bytes) * r.tensor_parallel_size)
        plan_notes.append(f"vLLM KV cache: about {tokens:,} tokens ({tokens // r.max_model_len:,} sequences of "
                          f"rollout.max_model_len={r.max_model_len}); the engine's activations come out of it")
    sleep_hint = "rollout.sleep=true" if not r.sleep else "rollout.gpu_memory_utilization (lower)"
    return [Item("vLLM engine weights", weights, phases, sleep_hint),
            Item(f"vLLM KV cache (gpu_memory_utilization={r.gpu_memory_utilization} incl. weights)", max(kv, 0.0),
                 phases, sleep_hint)]


def plan_for(cfg: OnlineConfig, gpus: int, gpu_memory_gb: float) -> MemoryPlan:
    """The per-GPU plan of `cfg` on `gpus` ranks of `gpu_memory_gb` each (raises ValueError, naming the key,
    when a model's architecture is unknown)."""
    from rl.online import needs_prm

    policy = policy_model(cfg)
    notes: list[str] = [f"{gpus} rank(s), one per GPU; estimates (core/memory_plan.py), not measurements"]
    problems: list[str] = []
    items = policy_items(cfg, policy, gpus)
    if needs_prm(cfg):
        items += prm_items(cfg, gpus)
    if cfg.rollout.backend == RolloutBackendName.vllm:
        items += vllm_items(cfg, policy, gpu_memory_gb, notes, problems)
    else:
        notes.append("rollout=hf: generation runs on the trainer's weights; its KV cache is not planned")
    return MemoryPlan(items, gpu_memory_gb, notes, problems)


def startup_check(cfg: OnlineConfig, gpus: int, detected_gb: float, show: bool = True) -> MemoryPlan | None:
    """rl.online on cuda, before any model loads: print the plan (rank 0) and refuse one over the card."""
    try:
        plan = plan_for(cfg, gpus, cfg.plan.gpu_memory_gb or detected_gb)
    except ValueError as err:   # an architecture the plan cannot read: say so, do not block the run
        if show:
            print(f"[rl.online] no memory plan: {err}")
        return None
    if show:
        print(f"[rl.online] memory plan per GPU ({plan.gpu_memory_gb:.0f} GB):\n{plan.table()}\n{plan.advice()}")
    if not plan.fits and cfg.plan.check:
        raise MemoryPlanError(f"{plan.advice()}. `python -m rl.plan` with the same overrides prints the table; "
                              f"plan.check=false starts anyway")
    return plan


def split_argv(argv: list[str]) -> tuple[str, list[str]]:
    """(config name, overrides) from hydra's command line: `--config-name X`, `--config-name=X`, `-cn X`."""
    name, rest, i = "online", [], 0
    while i < len(argv):
        word = argv[i]
        if word in ("--config-name", "-cn") and i + 1 < len(argv):
            name, i = argv[i + 1], i + 2
            continue
        if word.startswith("--config-name="):
            name = word.split("=", 1)[1]
        elif not word.startswith("hydra."):
            rest.append(word)
        i += 1
    return name, rest


def main(argv: list[str] | None = None) -> int:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from core.config import validate

    name, overrides = split_argv(sys.argv[1:] if argv is None else argv)
    with initialize_config_module(config_module="configs", version_base=None):
        raw = compose(config_name=name, overrides=overrides)
    cfg = validate(OmegaConf.to_container(raw, resolve=True), OnlineConfig)
    gpus = cfg.plan.gpus or int(os.environ.get("WORLD_SIZE", "1"))
    memory, source = cfg.plan.gpu_memory_gb, "plan.gpu_memory_gb"
    if memory is None:
        import torch
        if torch.cuda.is_available():
            memory, source = torch.cuda.get_device_properties(0).total_memory / GB, "detected"
        else:
            memory, source = 80.0, "no GPU here: plan.gpu_memory_gb sets it"
    plan = plan_for(cfg, gpus, memory)
    print(f"memory plan per GPU: {cfg.policy.model} policy, {gpus} GPU(s) of {memory:.0f} GB ({source})\n")
    print(plan.table())
    print("\n" + plan.advice())
    return FITS if plan.fits else OVER


if __name__ == "__main__":
    sys.exit(main())
