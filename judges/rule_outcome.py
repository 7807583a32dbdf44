"""The rule_outcome judge: the rule judge's first false equation, else the verified final answer.

The rule judge alone marks a step wrong only where it writes a false equation, so a solution that reads
the question wrong but computes correctly is "all correct" (bench/RESULTS.md, search). This judge also
uses whether the solution's final answer was verified correct, which the caller already knows (rl.search
pools carry it as meta.correct):

    first_error = the rule judge's first false equation, if any
                  else the last step, if the answer is wrong or missing
                  else -1 (all correct)

Like the oracle it reads per-item facts from records (question, steps, correct or meta.correct), either
judge.records_path or the caller's records (prm.train passes its pool).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from judges.base import Cost, Verdict, item_key
from judges.config import RuleOutcomeJudgeConfig
from judges.registry import register_judge
from core.rows import Rows
from judges.rule import RULES_VERSION, RuleJudge


def verified(record: Mapping[str, Any], where: str) -> tuple[str, bool]:
    """(item key, whether its final answer verified) of one record."""
    question, steps = record.get("question", record.get("problem")), record.get("steps")
    correct = record.get("correct", (record.get("meta") or {}).get("correct"))
    if not isinstance(question, str) or not isinstance(steps, list):
        raise ValueError(f"{where}: 'question' (a string) and 'steps' (a list) are required")
    if not isinstance(correct, bool):
        raise ValueError(f"{where}: 'correct' (or 'meta.correct') must be true or false, got {correct!r}")
    return item_key(question, steps), correct


def load_verified_records(path: str) -> list[dict]:
    """judge.records_path: question, steps and correct (or meta.correct) per record; a bad one names file,
    1-based line and field. (The oracle's loader keeps only labelled fields: it would drop `correct`.)"""
    rows = Rows(Path(path))

    def parse(at, rec: dict) -> dict:
        q_name = "question" if "question" in rec else "problem"
        correct = rec.get("correct", (rec.get("meta") or {}).get("correct"))
        if not isinstance(correct, bool):
            raise rows.error(at, "correct", f"must be true or false (or meta.correct), got {correct!r}")
        return {"question": rows.get(at, rec, q_name), "steps": rows.steps(at, rec, "steps"), "correct": correct}
    return rows.parse(parse)


@register_judge("rule_outcome", config=RuleOutcomeJudgeConfig)
class RuleOutcomeJudge(RuleJudge):

    def __init__(self, records: Iterable[Mapping[str, Any]]):
        self._correct = dict(verified(r, f"record {i}") for i, r in enumerate(records))

    @property
    def identity(self) -> str:
        return f"rule_outcome:{RULES_VERSION}"

    def judge(self, question: str, steps: list[str]) -> Verdict:
        verdict = super().judge(question, steps)     # the first false equation, if any
        if verdict.first_error != -1:
            return verdict
        key = item_key(question, steps)
        if key not in self._correct:
            raise KeyError(f"rule_outcome has no verified answer for this item (question starts {question[:60]!r})")
        if not self._correct[key]:
            return Verdict(len(steps) - 1, raw="no false equation; final answer wrong", cost=Cost(calls=1))
        return Verdict(-1, raw="no false equation; final answer right", cost=Cost(calls=1))

    @classmethod
    def from_config(cls, cfg: Any, **context: Any) -> "RuleOutcomeJudge":
        if cfg.records_path:
            return cls(load_verified_records(cfg.records_path))
        if context.get("records") is None:
            raise ValueError("the rule_outcome judge needs records with the verified answers: set "
                             "judge.records_path or pass records=")
        return cls(context["records"])
