"""Problems (a question with its reference answer), trajectories (a solution as steps, with the index of
its first wrong step when labelled) and the public problem sets (GSM8K, MATH-500)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.rows import DataError, finish_rows, data_root, rows_of

@dataclass
class Problem:
    question: str
    reference_answer: str | None = None
    source: str = ""


@dataclass
class Trajectory:
    question: str
    steps: list[str]
    first_error: int | None = None
    reference_answer: str | None = None
    source: str = ""
    generator: str = ""
    round: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "", {})}


def gsm8k_answer(solution: str) -> str:
    """The reference answer of a GSM8K solution: the text after '####', commas removed."""
    if "####" not in solution:
        raise ValueError("no '#### N' line")
    return solution.split("####")[-1].strip().replace(",", "")


def load_gsm8k(split: str = "test", root: str | Path | None = None, skip_bad_rows: bool = False,
               limit: int | None = None, source: str | None = None) -> list[Problem]:
    rows = rows_of(source, data_root(root) / "gsm8k" / f"{split}.jsonl", split, skip_bad_rows)

    def parse(i: int, rec: dict) -> Problem:
        solution = rows.get(i, rec, "answer")
        try:
            answer = gsm8k_answer(solution)
        except ValueError as e:
            raise DataError(rows.path, i, "answer", str(e)) from e
        return Problem(rows.get(i, rec, "question"), answer, f"gsm8k/{split}:{i}")

    return finish_rows(rows, rows.parse(parse))[:limit]


def load_math500(root: str | Path | None = None, skip_bad_rows: bool = False,
                 limit: int | None = None, source: str | None = None) -> list[Problem]:
    rows = rows_of(source, data_root(root) / "math500" / "test.jsonl", "test", skip_bad_rows)
    parse = lambda i, rec: Problem(rows.get(i, rec, "problem"), rows.get(i, rec, "answer"),
                                   f"math500:{rec.get('unique_id', i)}")
    return finish_rows(rows, rows.parse(parse))[:limit]

