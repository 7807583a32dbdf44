"""Dataclass schemas for the hydra config groups `prm`, `pool` (trajectories to label or score) and `trainer`.

Every entry point merges its composed config into its schema with `validate`, so an unknown key or
an ill-typed value fails at start-up with a message naming the key, before any model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore

from core.config import ConfigError, OutDirConfig, TrainerConfig, check_device, check_ranges
from core.rows import PROCESSBENCH_SUBSETS
from judges.config import BenchmarkEvalConfig
from judges.registry import validate_judge_config


class SelectMode(StrEnum):
    """Which trajectories go to the judge (prm.selection.select; docs/method.md, Eq. 5). One vocabulary
    for prm.train and rl.online (prm.train's old mode=active|random|full: uncertain|random|all)."""
    uncertain = "uncertain"   # Eq. 5, most uncertain first when a budget caps it
    random = "random"         # uniformly at random (a baseline at equal budget)
    all = "all"               # every trajectory
    none = "none"             # nothing judged


class PRMTrainMode(StrEnum):
    full = "full"
    lora = "lora"
    frozen = "frozen"         # heads only, on cached separator features


class StepFeatures(StrEnum):
    """What the heads read for each step (prm.model.EnsemblePRM.separator_features)."""
    hidden = "hidden"                  # the backbone's last hidden state at the step's separator
    # + the backbone's own log min and log mean token probability of the step's tokens (its LM head on the
    # same forward pass): a PRM whose backbone is the policy then sees what the policy found unlikely, and
    # its labels teach it where that likelihood is wrong (docs/method.md, Step features)
    hidden_logprob = "hidden_logprob"
    # the same two columns read by a frozen copy of the *initial* backbone (prm.backbone as loaded, never
    # trained or saved) while train_mode full/lora trains the body for the hidden part: a trained backbone
    # learns errors the policy is sure of, the frozen columns keep the policy's surprise at a slip, which a
    # backbone trained for classification loses (bench/RESULTS.md). Under train_mode=frozen it is hidden_logprob.
    hidden_policy_logprob = "hidden_policy_logprob"


class BatchLayout(StrEnum):
    """Token layout of the PRM's training batches (prm.batching): same loss and gradients, less padding."""
    padded = "padded"       # right-padded to the longest
    bucketed = "bucketed"   # sorted sub-batches, <= 10 % pad each: no attention across sequences (CPU)
    packed = "packed"       # rows of sequences end to end, block-diagonal attention (GPU, flash-attention varlen)


class PRMJob(StrEnum):
    train = "train"           # select, label, train over the pool (then evaluate)
    filter = "filter"         # score the pool with a trained PRM, write its Eq. 5-uncertain part


@dataclass
class PRMConfig:
    backbone: str = "smollm2-135m-instruct"   # a built-in name (core.models), a local dir or an HF id
    dtype: str = "fp32"                       # bf16 only on a GPU or a CPU with AVX512-BF16/AMX (else slower)
    num_heads: int = 32                       # K; the paper's ensemble size
    head_hidden: int = 128
    train_mode: PRMTrainMode = PRMTrainMode.frozen
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    sep_token: str = "<extra_0>"              # added to the tokenizer when missing
    step_features: StepFeatures = StepFeatures.hidden  # hidden | hidden_logprob | hidden_policy_logprob
    # The system turn of the PRM's input (saved with the PRM: it is part of what the model reads).
    # None = the chat template's own default (SmolLM2's adds a ~29-token system prompt); "" = an empty
    # system turn, e.g. to feed the same tokens as trainers that use no chat template (TRL's PRMTrainer).
    system_prompt: str | None = None
    max_length: int = 512
    delta_pred: float = 0.9                   # Eq. 5 aleatoric threshold
    delta_std: float = 0.01                   # Eq. 5 epistemic threshold
    reg_lambda: float = 0.5                   # Eq. 4 anchor regulariser (0 when K = 1)
    lr: float = 1e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    batch_size: int = 8
    # Training batches' token layout (prm.batching), same loss and gradients: padded | bucketed (sorted
    # sub-batches; the default: no quadratic attention over a packed row, fastest on a CPU) | packed (rows of
    # sequences end to end, block-diagonal attention from restarting position ids; for GPUs)
    batch_layout: BatchLayout = BatchLayout.bucketed
    pack_tokens: int = 2048                   # bucketed/packed: at most this many tokens per sub-batch / row
    # Optimizer steps per PRMLearner.update call, all on that call's selected, labelled batch (selection
    # and labels from the first pass, paid once): the online loop gets few labels a round, so reusing
    # them lets its PRM learn faster. Not replays of older labels (that is prm.train's epochs).
    update_steps: int = 1
    pos_weight: float = 1.0                   # BCE weight on "correct" steps (class imbalance)
    threshold: float = 0.5                    # tau: step predicted correct if score >= tau
    path: str | None = None                   # load a saved PRM dir instead of a fresh one
    seed: int = 0
    device: str = "auto"                      # auto (cuda:LOCAL_RANK if a GPU, else cpu) | cpu | cuda | cuda:N
    zero_stage: int = 0                       # DeepSpeed ZeRO stage of the PRM's optimizer (trainer.deepspeed)

    def __post_init__(self):
        check_device(self.device)
        check_ranges(self, "prm.", num_heads=">= 1", head_hidden=">= 1", lora_r=">= 1", lora_alpha="> 0",
                     max_length=">= 1", delta_pred="in [0, 1]", delta_std=">= 0", reg_lambda=">= 0", lr="> 0",
                     head_lr="> 0", weight_decay=">= 0", warmup_steps=">= 0", batch_size=">= 1", pack_tokens=">= 1",
                     update_steps=">= 1", pos_weight="> 0", threshold="in [0, 1]", zero_stage="0, 1, 2 or 3")


@dataclass
class ReplayConfig:
    """Online PRM training on every paid label (prm.replay); off = one update on this round's labels."""
    enabled: bool = False
    capacity: int = 4096                      # judged trajectories kept (oldest evicted)
    steps: int = 8                            # PRM updates per round, each on one replay batch
    batch_size: int = 32                      # trajectories per replay batch
    new_fraction: float = 0.5                 # share of each batch from labels paid since the last round
    heldout_size: int = 0                     # policy samples judged once at the start: PRM quality per round

    def __post_init__(self):
        check_ranges(self, "replay.", capacity=">= 1", steps=">= 0", batch_size=">= 1", new_fraction="in [0, 1]",
                     heldout_size=">= 0")


class PoolName(StrEnum):
    """Where prm.train's trajectories come from (prm.data.load_pool)."""
    prm800k = "prm800k"               # PRM800K phase-1 step rows regrouped into trajectories
    processbench = "processbench"     # a ProcessBench subset (pool.subset) as a labelled pool
    jsonl = "jsonl"                   # our trajectories JSONL (pool.path), e.g. rl.search job=pool or job=filter
    trl = "trl"                       # TRL's stepwise format (prompt/completions/labels)
    math_shepherd = "math_shepherd"   # Math-Shepherd's tagged steps


@dataclass
class PoolConfig:
    name: PoolName = PoolName.prm800k
    subset: str = "gsm8k"                     # processbench: which subset
    path: str | None = None                   # file for jsonl/trl/math_shepherd; processbench: a file or hf:<hub id>
    neutral_as: str = "correct"               # PRM800K rating 0: 'correct' (usual) or 'error'
    limit: int | None = None
    max_tokens: int | None = 512              # drop pool items longer than this (tokens)
    skip_bad_rows: bool = False
    shuffle_seed: int = 0

    def __post_init__(self):
        check_ranges(self, "pool.", limit=">= 1", max_tokens=">= 1")


@dataclass
class EvalConfig(BenchmarkEvalConfig):
    """`eval.*` of prm.eval and prm.train: the PRM (or a judge) on ProcessBench and PRMBench."""
    subsets: list[str] = field(default_factory=lambda: ["gsm8k", "math"])  # ProcessBench; ["all"] = the four
    processbench_source: str | None = None    # None: <data_root>/processbench; hf:Qwen/ProcessBench = the hub
    threshold: float = 0.5                    # tau when not tuned
    tune_on: str | None = None                # pick tau on this ProcessBench subset, apply it to all
    prmbench: bool = False
    prmbench_limit: int | None = None
    prmbench_path: str | None = None          # a PRMBench JSONL file or folder of them (None: the bundled subset)
    skip_bad_rows: bool = False               # PRMBench: count and name rows that cannot be scored instead of failing
    batch_size: int = 8

    def __post_init__(self):
        super().__post_init__()
        check_ranges(self, "eval.", threshold="in [0, 1]", prmbench_limit=">= 1", batch_size=">= 1")
        if self.tune_on is not None and self.tune_on not in PROCESSBENCH_SUBSETS:
            raise ConfigError(f"eval.tune_on must be a ProcessBench subset {list(PROCESSBENCH_SUBSETS)}, got {self.tune_on!r}")


@dataclass
class PRMEvalConfig:
    prm: PRMConfig = field(default_factory=PRMConfig)
    judge: Any = None                         # evaluate a judge instead of a PRM (judges.config schema of its kind)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data_root: str | None = None              # null: ../shared/data next to the repo
    trainer: OutDirConfig = field(default_factory=lambda: OutDirConfig("outputs/prm_eval"))   # trainer.out_dir

    def __post_init__(self):
        if self.judge is not None:
            self.judge = validate_judge_config(self.judge)


@dataclass
class PoolSelectConfig:
    mode: SelectMode = SelectMode.uncertain
    budget: float = 1.0                       # <= 1: fraction of the pool; > 1: number of labels

    def __post_init__(self):
        if self.mode == SelectMode.none:
            raise ConfigError("select.mode=none trains on nothing; prm.train takes select.mode=uncertain|random|all")
        if self.budget <= 0:
            raise ConfigError(f"select.budget must be > 0, got {self.budget}")


@dataclass
class PRMTrainConfig:
    prm: PRMConfig = field(default_factory=PRMConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    judge: Any = "oracle"                     # a judge name or its schema's dict (judges.config); oracle = pool labels
    eval: EvalConfig = field(default_factory=EvalConfig)
    job: PRMJob = PRMJob.train
    select: PoolSelectConfig = field(default_factory=PoolSelectConfig)
    epochs: int = 1                           # passes: the stream, then epochs-1 replays of the acquired labels
    feature_cache: str | None = None          # frozen mode: safetensors file of separator features (reused)
    data_root: str | None = None              # the pool's and the evaluation's files; null: ../shared/data
    filter_out: str | None = None             # mode=filter: JSONL of the uncertain part (None -> <out_dir>/uncertain.jsonl)
    stop_after_batches: int | None = None     # stop (with a checkpoint) after this many updates: tests, time limits
    run_eval: bool = True

    def __post_init__(self):
        check_ranges(self, "", epochs=">= 1", stop_after_batches=">= 1")
        self.judge = validate_judge_config(self.judge)


# The schemas are the base of their top-level configs (first in each defaults list), so hydra composes
# onto the full typed key set: `prm.path=...` works without `+`, and a misspelt key fails at once.
ConfigStore.instance().store(name="prm_train_schema", node=PRMTrainConfig)
ConfigStore.instance().store(name="prm_eval_schema", node=PRMEvalConfig)
