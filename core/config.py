"""Config infrastructure every command shares: schema validation before anything loads, the output
dir node, device resolution and the trainer node (seed, DeepSpeed, checkpoints)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def validate(cfg: DictConfig | dict, schema: type[T]) -> T:
    """Merge `cfg` into `schema` (struct mode: unknown keys and wrong types are errors); return the object.
    Every command validates its composed config this way, before any model, engine or judge is built."""
    if isinstance(cfg, DictConfig):
        # plain keys first: a composed config already typed as `schema` would carry a `+key=` added at the
        # command line through the merge (an attribute the schema does not have) instead of failing
        cfg = OmegaConf.to_container(cfg)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid config for {schema.__name__}: {err}") from None
    except (KeyError, ValueError) as err:   # a schema's own rule (__post_init__), named by its keys
        raise ConfigError(err.args[0] if err.args else str(err)) from None


@dataclass
class OutDirConfig:
    """The `trainer` node of a command that trains nothing (prm.eval, judges.eval; rl.search adds resume):
    every command spells its output dir `trainer.out_dir`, as rl.online and prm.train do."""
    out_dir: str = "outputs/run"


# A numeric setting's range, by name: schemas call check_ranges in __post_init__, so an out-of-range value
# fails while the config is validated, naming its key, not deep inside a run after the models have loaded
# (rollout.n=0 would divide by zero there).
RANGES: dict[str, Callable[[float], bool]] = {
    ">= 0": lambda v: v >= 0, ">= 1": lambda v: v >= 1, "> 0": lambda v: v > 0,
    "in [0, 1]": lambda v: 0 <= v <= 1, "in (0, 1]": lambda v: 0 < v <= 1, "in [0, 1)": lambda v: 0 <= v < 1,
    "0, 1, 2 or 3": lambda v: v in (0, 1, 2, 3)}


def check_ranges(node: object, prefix: str, **rules: str) -> None:
    """Fail naming every key of `node` outside its range (`rules`: key -> a RANGES name). None, an unset
    optional, passes; a list is checked item by item. `prefix`: the node's key path (`rollout.`)."""
    bad = []
    for key, rule in rules.items():
        value = getattr(node, key)
        values = value if isinstance(value, list) else [value]
        if any(v is not None and not RANGES[rule](v) for v in values):
            bad.append(f"{prefix}{key} must be {rule}, got {value}")
    if bad:
        raise ConfigError("; ".join(bad))


DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(device: str | None) -> str:
    """`auto` (or None): cuda:LOCAL_RANK when a GPU is visible, else cpu. `cuda` under a launcher
    (torchrun / deepspeed set WORLD_SIZE) is this rank's GPU, cuda:LOCAL_RANK. Else as written."""
    import os

    import torch
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        return f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{local}" if "WORLD_SIZE" in os.environ else "cuda:0"
    return device


def check_device(device: str, key: str = "prm.device") -> None:
    """Fail at start-up, not at the first batch, when `device` is malformed or not usable here."""
    if not DEVICE_RE.fullmatch(device):
        raise ConfigError(f"{key} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device in ("cpu", "auto"):
        return
    import torch  # only here: configs are composed (and tested) without paying for torch
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}={device!r} but torch.cuda.is_available() is False (torch {torch.__version__}, "
                          f"CUDA build {torch.version.cuda}); use {key}=cpu or install a CUDA build of torch")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{key}={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")


class ResumeCheck(StrEnum):
    """What resume checks of a checkpoint against its manifest (core.checkpoint_io.verify)."""
    size = "size"       # every file present at the size written (its sha256 was computed while writing)
    sha256 = "sha256"   # also re-read and re-hash every file (a full pass over the checkpoint, on every rank)


@dataclass
class TrainerConfig:
    out_dir: str = "outputs/run"
    seed: int = 0
    deepspeed: bool = True                    # optimizers as DeepSpeed engines; each model's stage: policy/prm.zero_stage
    # checkpoint every N training steps; a step is one iteration of the command's loop, one `step`/`round`
    # line of metrics.jsonl: an online round in rl.online (generate, judge, update), a batch of the pool
    # (select, label, update) in prm.train
    save_every: int = 1                       # 0: no periodic checkpoint
    resume: str = "auto"                      # auto | never | <checkpoint dir>
    resume_check: ResumeCheck = ResumeCheck.size   # size | sha256 (re-hash every file before resuming)
    progress: bool = True
    # node-local directory for the run's SQLite files (the judge ledger) when there are several ranks or out_dir
    # is on a network filesystem (SQLite's WAL needs one host's locks); null: $TMPDIR/prmloop-<user>/<run>
    local_dir: str | None = None
    # minutes a collective may wait (every process group): longer than any phase one rank works alone in
    # (the judge: judge deadline x attempts; a checkpoint's hashing) while the others wait; NCCL's default is 10
    dist_timeout_min: int = 120

    def __post_init__(self):
        check_ranges(self, "trainer.", save_every=">= 0", dist_timeout_min=">= 1")

