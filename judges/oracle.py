"""The oracle judge: reveals labels that already exist (pool-based active learning).

Every reveal is a paid label (cost.calls = 1), so a budget counts labels revealed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from judges.base import Cost, Judge, Verdict, item_key
from judges.config import OracleJudgeConfig
from judges.registry import register_judge
from core.rows import Rows, Where


@register_judge("oracle", config=OracleJudgeConfig)
class OracleJudge(Judge):
    def __init__(self, records: Iterable[Mapping[str, Any]]):
        self._labels: dict[str, int] = {}
        for i, record in enumerate(records):
            question, steps, first_error = _parse_record(record, where=f"record {i + 1} (1-based)")
            self._labels[item_key(question, steps)] = first_error

    @property
    def identity(self) -> str:
        return "oracle"

    def __len__(self) -> int:
        return len(self._labels)

    def judge(self, question: str, steps: list[str]) -> Verdict:
        key = item_key(question, steps)
        if key not in self._labels:
            raise KeyError(f"the oracle has no label for this item (question starts {question[:60]!r}, "
                           f"{len(steps)} steps, key {key[:12]}); it only knows its {len(self)} records")
        first_error = self._labels[key]
        return Verdict(first_error, raw=str(first_error), cost=Cost(calls=1))

    @classmethod
    def from_config(cls, cfg: Any, **context: Any) -> "OracleJudge":
        if cfg.records_path:
            return cls(load_records(cfg.records_path))
        if context.get("records") is None:
            raise ValueError("the oracle judge needs records: set judge.records_path or pass records=")
        return cls(context["records"])


def load_records(path: str | Path, skip_bad_rows: bool = False) -> list[dict]:
    """Labelled records from a JSON list or a JSONL file; a bad one names file, 1-based line and field."""
    rows = Rows(Path(path), skip_bad_rows)

    def parse(at: Where, rec: dict) -> dict:
        q_name = "question" if "question" in rec else "problem"
        label_name = "first_error" if "first_error" in rec else "label"
        steps = rows.steps(at, rec, "steps")
        return {"question": rows.get(at, rec, q_name), "steps": steps,
                "first_error": rows.first_error(at, rec, label_name, len(steps))}
    return rows.parse(parse)


def _parse_record(record: Mapping[str, Any], where: str) -> tuple[str, list[str], int]:
    # Our trajectory model says question/first_error; ProcessBench says problem/label. Accept both.
    question = record.get("question", record.get("problem"))
    steps = record.get("steps")
    first_error = record.get("first_error", record.get("label"))
    if not isinstance(question, str):
        raise ValueError(f"{where}: 'question' (or 'problem') must be a string")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise ValueError(f"{where}: 'steps' must be a list of strings")
    if isinstance(first_error, bool) or not isinstance(first_error, int) or not -1 <= first_error < len(steps):
        raise ValueError(f"{where}: 'first_error' (or 'label') must be an int in [-1, {len(steps)}), "
                         f"got {first_error!r}")
    return question, steps, first_error
