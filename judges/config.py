"""The judge config schema. Every judge config is merged onto it, so a typo fails at start-up."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class JudgeConfig:
    name: str = "rule"  # a key of judges.JUDGES: oracle | rule | llm

    # llm: any OpenAI-compatible /v1/chat/completions endpoint
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    api_key_env: str = "PRMLOOP_JUDGE_API_KEY"  # the NAME of the env var; the key itself is never in a config
    temperature: float = 0.5  # paper (QwQ-32B judge)
    top_p: float = 0.95
    max_tokens: int = 4096  # per call: the completion cap sent to the endpoint
    timeout_s: float = 120.0  # connect and each socket read: a silent server fails after this
    deadline_s: float = 600.0  # one request in total, body included: a server dripping bytes fails after this
    max_retries: int = 4  # on 429, 5xx, timeouts, dropped connections, unreadable 200 bodies
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0  # also caps a server's Retry-After
    max_concurrency: int = 64  # requests in flight at once (a served model batches them)

    # oracle: labelled records (JSON list or JSONL: question/problem, steps, first_error/label);
    # when null, the caller passes records= (e.g. judges.eval passes the benchmark items)
    records_path: Optional[str] = None

    # ledger and budget (one ledger file = one budget; None = unlimited)
    ledger_path: Optional[str] = None
    max_labels: Optional[int] = None  # judge calls paid, invalid ones included
    max_total_tokens: Optional[int] = None  # prompt + completion tokens over all calls
    ledger_lease_s: float = 120.0  # a reservation not renewed for this long (its process died) expires


def validate_judge_config(cfg: Any) -> JudgeConfig:
    """Merge cfg (dict / DictConfig / JudgeConfig) onto the schema; raise ValueError naming the bad key."""
    if isinstance(cfg, JudgeConfig):
        cfg = OmegaConf.structured(cfg)
    elif not isinstance(cfg, (dict, DictConfig)):
        raise TypeError(f"a judge config must be a dict, DictConfig or JudgeConfig, not {type(cfg).__name__}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(JudgeConfig), cfg)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ValueError(f"invalid judge config: {exc}".strip()) from None
    assert isinstance(config, JudgeConfig)
    _check_ranges(config)
    return config


def _check_ranges(c: JudgeConfig) -> None:
    problems = []
    if c.max_concurrency < 1:
        problems.append(f"max_concurrency must be >= 1, got {c.max_concurrency}")
    if c.max_retries < 0:
        problems.append(f"max_retries must be >= 0, got {c.max_retries}")
    for key in ("timeout_s", "deadline_s", "ledger_lease_s"):
        if getattr(c, key) <= 0:
            problems.append(f"{key} must be > 0, got {getattr(c, key)}")
    if c.max_tokens < 1:
        problems.append(f"max_tokens must be >= 1, got {c.max_tokens}")
    for key in ("max_labels", "max_total_tokens"):
        if getattr(c, key) is not None and getattr(c, key) < 0:
            problems.append(f"{key} must be >= 0 or null, got {getattr(c, key)}")
    if problems:
        raise ValueError("invalid judge config: " + "; ".join(problems))
