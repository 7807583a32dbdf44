"""Judge config schemas, one per kind, and the schema of `python -m judges.eval`.

Every judge config is merged onto its kind's schema (picked by `name` in judges.registry), so a typo,
a key another kind owns (`judge=rule judge.base_url=...`) or an out-of-range value fails at start-up,
before any model, engine or judge is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from core.config import OutDirConfig, check_ranges
from core.rows import PROCESSBENCH_SUBSETS


class OnFailure(str, Enum):
    """What a labelling command does with an item the judge still fails on after every retry."""
    skip = "skip"  # leave it unlabelled (counted as judge/failed) and go on with the others
    stop = "stop"  # raise: the command ends (what it paid for so far stays in the ledger)


@dataclass
class JudgeConfig:
    """What every judge has: its kind and its ledger/budget (one ledger file = one budget; None = unlimited)."""
    name: str = "rule"  # a key of judges.registry.JUDGES: oracle | rule | chain | rule_outcome | llm | yours
    ledger_path: Optional[str] = None  # None: the command's default, under trainer.out_dir
    max_labels: Optional[int] = None  # judge calls paid, invalid ones included
    max_total_tokens: Optional[int] = None  # prompt + completion tokens over all calls
    ledger_lease_s: float = 120.0  # a reservation not renewed for this long (its process died) expires
    on_failure: OnFailure = OnFailure.skip  # an item still failing after every retry (timeouts, 5xx)
    reask_invalid: bool = False  # ask again for items whose stored verdict is invalid (paid again)

    def __post_init__(self) -> None:
        for key in ("max_labels", "max_total_tokens"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ValueError(f"invalid judge config: judge.{key} must be >= 0 or null, got {getattr(self, key)}")
        if self.ledger_lease_s <= 0:
            raise ValueError(f"invalid judge config: judge.ledger_lease_s must be > 0, got {self.ledger_lease_s}")


@dataclass
class RuleJudgeConfig(JudgeConfig):
    name: str = "rule"


@dataclass
class ChainJudgeConfig(JudgeConfig):
    name: str = "chain"


@dataclass
class OracleJudgeConfig(JudgeConfig):
    name: str = "oracle"
    # labelled records (JSON list or JSONL: question/problem, steps, first_error/label); when null, the
    # caller passes records= (judges.eval passes the benchmark items, prm.train the pool)
    records_path: Optional[str] = None


@dataclass
class RuleOutcomeJudgeConfig(JudgeConfig):
    name: str = "rule_outcome"
    # records with question, steps and correct (or meta.correct); null: the caller's (prm.train: the pool)
    records_path: Optional[str] = None


@dataclass
class LLMJudgeConfig(JudgeConfig):
    """Any OpenAI-compatible /v1/chat/completions endpoint."""
    name: str = "llm"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    api_key_env: str = "PRMLOOP_JUDGE_API_KEY"  # the NAME of the env var; the key itself is never in a config
    temperature: float = 0.5  # paper (QwQ-32B judge)
    top_p: float = 0.95
    max_tokens: int = 4096  # per call: the completion cap sent to the endpoint (part of the identity)
    timeout_s: float = 120.0  # connect and each read of the stream: a silent server fails after this
    deadline_s: float = 1800.0  # one request in total: fits max_tokens at the critic's slowest tokens/s
    max_retries: int = 4  # on 429, 5xx, timeouts, dropped connections, unreadable 200 bodies
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0  # also caps a server's Retry-After
    max_concurrency: int = 64  # requests in flight at once (a served model batches them)
    wait_s: float = 0.0  # wait this long for a server that is down (restarting) before retries count
    stream: bool = True  # stream replies (the read timeout then fits long critiques); false: one JSON body
    check_at_start: bool = True  # models list + one tiny request before any generation

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = [f"judge.{key} must be {rule}, got {getattr(self, key)}" for key, rule, ok in (
            ("max_concurrency", ">= 1", self.max_concurrency >= 1), ("max_retries", ">= 0", self.max_retries >= 0),
            ("timeout_s", "> 0", self.timeout_s > 0), ("deadline_s", "> 0", self.deadline_s > 0),
            ("wait_s", ">= 0", self.wait_s >= 0),
            ("max_tokens", ">= 1", self.max_tokens >= 1)) if not ok]
        if problems:
            raise ValueError("invalid judge config: " + "; ".join(problems))


@dataclass
class BenchmarkEvalConfig:
    """`eval.*`: which ProcessBench items a step scorer is measured on, spelt the same in judges.eval,
    prm.eval and prm.train (prm.config.EvalConfig adds the PRM's settings). rl.online's `policy_eval.*`
    is another thing: the policy's pass rate."""
    subsets: list[str] = field(default_factory=lambda: ["gsm8k"])  # ProcessBench subsets; [all]: the four
    limit: Optional[int] = None  # N items of each subset, evenly spaced (both classes); null: all

    def __post_init__(self) -> None:
        check_ranges(self, "eval.", limit=">= 1")
        if self.subsets == ["all"]:
            self.subsets = list(PROCESSBENCH_SUBSETS)
        unknown = [s for s in self.subsets if s not in PROCESSBENCH_SUBSETS]
        if unknown:
            raise ValueError(f"eval.subsets must be ProcessBench subsets {list(PROCESSBENCH_SUBSETS)} or [all], got "
                             f"{self.subsets} (unknown: {unknown})")


@dataclass
class JudgeEvalTrainerConfig(OutDirConfig):
    """judges.eval's `trainer` node: the output dir and seed, spelt as in the other commands."""
    out_dir: str = "outputs/judge_eval"
    seed: int = 0  # seeds the retry jitter of an LLM judge's client, as trainer.seed seeds every command


@dataclass
class JudgeEvalConfig:
    """`python -m judges.eval`: a judge's ProcessBench F1, every label through the ledger
    (judge.ledger_path; null: <trainer.out_dir>/ledger.sqlite)."""
    judge: Any = field(default_factory=lambda: {"name": "rule"})  # validated by validate_judge_config
    data_root: Optional[str] = None  # null: ../shared/data next to the repo; else relative to where you run
    eval: BenchmarkEvalConfig = field(default_factory=BenchmarkEvalConfig)  # eval.subsets, eval.limit
    trainer: JudgeEvalTrainerConfig = field(default_factory=JudgeEvalTrainerConfig)

    def __post_init__(self) -> None:
        from judges.registry import (
            validate_judge_config,  # the registry reads this module's schemas
        )
        self.judge = validate_judge_config(self.judge)


# The base of configs/judge_eval.yaml (first in its defaults list): every key overridable without `+`.
ConfigStore.instance().store(name="judge_eval_schema", node=JudgeEvalConfig)
