"""The one judge registry: a judge's name -> (its class, its config schema).

`@register_judge(name, config=Schema)` adds a kind; `validate_judge_config` merges a config onto the
schema its `name` picks and `make_judge` builds the class the same entry names, so a judge a user
registers in their own module is validated and built like the built-in ones. A name registered twice
(to another class or schema) is refused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from judges.config import JudgeConfig

if TYPE_CHECKING:
    from judges.base import Judge

J = TypeVar("J", bound="type[Judge]")


@dataclass(frozen=True)
class JudgeKind:
    judge_class: type    # a judges.base.Judge subclass; built with judge_class.from_config(config, **context)
    config_class: type[JudgeConfig]


JUDGES: dict[str, JudgeKind] = {}


def register_judge(name: str, config: type[JudgeConfig] = JudgeConfig) -> Callable[[J], J]:
    """Class decorator: judge.name=<name> builds this class from a config merged onto `config`."""
    if not (isinstance(config, type) and issubclass(config, JudgeConfig)):
        raise TypeError(f"judge {name!r}: config must be a JudgeConfig subclass, not {config!r}")

    def add(cls: J) -> J:
        kind = JudgeKind(cls, config)
        if name in JUDGES and JUDGES[name] != kind:
            held = JUDGES[name]
            raise ValueError(f"judge name {name!r} is already registered to {held.judge_class.__name__} "
                             f"(config {held.config_class.__name__}); pick another name")
        JUDGES[name] = kind
        return cls
    return add


def judge_kind(name: str) -> JudgeKind:
    if name not in JUDGES:
        raise KeyError(f"unknown judge {name!r} (judge.name); registered judges: {sorted(JUDGES)}")
    return JUDGES[name]


def validate_judge_config(cfg: Any) -> JudgeConfig:
    """Merge cfg (a kind name, dict, DictConfig or JudgeConfig) onto its kind's schema; raise ValueError
    naming the bad key."""
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    if isinstance(cfg, JudgeConfig):   # maybe another kind's class: re-read as plain keys
        cfg = asdict(cfg)
    elif not isinstance(cfg, (dict, DictConfig)):
        raise TypeError(f"a judge config must be a name, dict, DictConfig or JudgeConfig, not {type(cfg).__name__}")
    name = cfg.get("name") or "rule"
    schema = judge_kind(name).config_class
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ValueError(f"invalid judge config for judge.name={name}: {exc}".strip()) from None
    assert isinstance(config, JudgeConfig)
    return config


def make_judge(cfg: Any, **context: Any) -> "Judge":
    """Build a judge from a config (a name, dict, DictConfig or JudgeConfig) whose `name` picks the kind.

    The config is validated against its kind's schema first: unknown or ill-typed keys fail here, at
    start-up, not deep inside a run. `context` carries run data some judges need (records).
    """
    config = validate_judge_config(cfg)
    return judge_kind(config.name).judge_class.from_config(config, **context)
