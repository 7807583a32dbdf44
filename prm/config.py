"""Dataclass schemas for the hydra config groups `prm`, `data` (PRM pools) and `trainer`.

Every entry point merges its composed config into its schema with `validate`, so an unknown key or
an ill-typed value fails at start-up with a message naming the key, before any model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def validate(cfg: DictConfig | dict, schema: type[T]) -> T:
    """Merge `cfg` into `schema` (struct mode: unknown keys and wrong types are errors); return the object."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid config for {schema.__name__}: {err}") from None


@dataclass
class PRMConfig:
    backbone: str = "smollm2-135m-instruct"   # a built-in name (prm.models), a local dir or an HF id
    dtype: str = "bf16"
    num_heads: int = 32                       # K; the paper's ensemble size
    head_hidden: int = 128
    train_mode: str = "frozen"                # full | lora | frozen (heads only, cached features)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    sep_token: str = "<extra_0>"              # added to the tokenizer when missing
    max_length: int = 512
    delta_pred: float = 0.9                   # Eq. 5 aleatoric threshold
    delta_std: float = 0.01                   # Eq. 5 epistemic threshold
    reg_lambda: float = 0.5                   # Eq. 4 anchor regulariser (0 when K = 1)
    lr: float = 1e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    batch_size: int = 8
    pos_weight: float = 1.0                   # BCE weight on "correct" steps (class imbalance)
    threshold: float = 0.5                    # tau: step predicted correct if score >= tau
    path: str | None = None                   # load a saved PRM dir instead of a fresh one
    seed: int = 0


@dataclass
class DataConfig:
    name: str = "prm800k"
    data_root: str | None = None              # None -> ../shared/data next to the repo
    pool: str = "prm800k"                     # prm800k | processbench/<subset> | jsonl | trl | math_shepherd
    path: str | None = None                   # file for jsonl/trl/math_shepherd pools
    neutral_as: str = "correct"               # PRM800K rating 0: 'correct' (usual) or 'error'
    limit: int | None = None
    max_tokens: int | None = 512              # drop pool items longer than this (tokens)
    skip_bad_rows: bool = False
    eval_subsets: list[str] = field(default_factory=lambda: ["gsm8k", "math"])
    eval_limit: int | None = None
    shuffle_seed: int = 0


@dataclass
class TrainerConfig:
    out_dir: str = "outputs/run"
    seed: int = 0
    device: str = "cpu"
    zero_stage: int = 0                       # DeepSpeed ZeRO stage; 0 = plain data parallel
    deepspeed: bool = True
    log_every: int = 1
    save_every: int = 1                       # rounds (online) or batches (PRM training)
    resume: str = "auto"                      # auto | never | <checkpoint dir>
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
