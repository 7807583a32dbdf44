"""The rollout backends by name (`rollout.backend=hf|vllm`): rl.rollout (HF) and rl.vllm_rollout import
only the interface, this registry imports them, so no backend module imports another."""
from __future__ import annotations

from typing import Callable

from rl.rollout import HFRollout, RolloutBackend


def _vllm_backend(**kwargs) -> RolloutBackend:
    from rl.vllm_rollout import VLLMRollout  # vllm is optional: import only when asked for

    return VLLMRollout(**kwargs)


ROLLOUTS: dict[str, Callable[..., RolloutBackend]] = {"hf": HFRollout, "vllm": _vllm_backend}


def make_rollout(name: str, **kwargs) -> RolloutBackend:
    if name not in ROLLOUTS:
        raise KeyError(f"unknown rollout backend {name!r}; registered: {sorted(ROLLOUTS)}")
    return ROLLOUTS[name](**kwargs)


def rollout_from_config(r, policy, model, tokenizer, seed: int, colocate: bool = False) -> RolloutBackend:
    """The backend of the `rollout` group `r` (rl.config.RolloutConfig) for the `policy` group's model: every
    engine setting passed, the one builder of rl.online, rl.search and its pool sampler."""
    from core.models import resolve_path

    model_dir = None if r.backend == "hf" else resolve_path(policy.model)
    return make_rollout(r.backend, model=model, tokenizer=tokenizer, model_dir=model_dir, seed=seed,
                        batch_size=r.batch_size, hf_kv_cache=r.hf_kv_cache, dtype=r.dtype or policy.dtype,
                        gpu_memory_utilization=r.gpu_memory_utilization, kv_cache_gb=r.kv_cache_gb,
                        max_model_len=r.max_model_len, enforce_eager=r.enforce_eager,
                        tensor_parallel_size=r.tensor_parallel_size, sleep=r.sleep, colocate=colocate,
                        sync_bucket_mb=r.sync_bucket_mb)
