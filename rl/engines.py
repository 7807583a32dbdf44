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
