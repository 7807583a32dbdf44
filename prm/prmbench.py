"""PRMBench as its official harness (mr_eval, task prmtest_classified) reads and scores it.

Reading (`read_prmbench`): a JSONL file or a folder of them (its *.jsonl files, not sub-folders, in
name order; the full release is 25 files, 6,216 rows). Each row gives one item: the PRM reads
`modified_question` with `modified_process`; `error_steps` are 1-based. Like the harness:
  - the first row of a (classification, idx) pair counts; later copies are dropped and named;
  - error steps outside the process point at nothing: they are dropped and counted;
  - every `redundency` row also gives a `correct` item: its `original_question` with its
    `original_process`, no error steps (once per idx).
Rows that cannot be scored (missing or blank question, no steps, a step that is not a string, ...)
raise DataError naming the file, 1-based line and field; with skip_bad_rows they are counted and named
in the report instead. A blank step is kept and scored, as the harness does (3 rows of the full release).

Scoring (`prmbench_results`): a step is predicted valid if its score > 0.5. Per category, over all
its steps pooled, TP/FP/TN/FN with "valid" as the positive class; F1 = F1 of the valid class,
negative F1 = F1 of the erroneous class, with the harness's conventions (a 0/0 precision or recall
is -1, and an F1 whose precision + recall is 0 is -1). Category score = 0.5 F1 + 0.5 negative F1,
except `multi_solutions` (no error steps) = F1 alone. `overall` = 0.5 F1 + 0.5 negative F1 over the
steps of every item except the `correct` ones (the published PRMScore); `correct` is reported
outside it (its score = F1 alone). `category_mean` = mean of the category scores (correct excluded).
An invalid verdict (scorer returns None) drops the item from the counts; invalid items are counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.rows import DataError, Rows, Where
from tasks.problems import Trajectory

CORRECT = "correct"
NO_ERROR_CATEGORIES = ("multi_solutions", CORRECT)   # scored by the F1 of valid steps alone
THRESHOLD = 0.5                                      # a step is predicted valid if its score > this


@dataclass
class PRMBenchReport:
    files: list[str] = field(default_factory=list)
    rows: int = 0
    items: int = 0
    skipped_rows: list[str] = field(default_factory=list)     # "file, line N, field 'x': problem"
    duplicate_rows: list[str] = field(default_factory=list)   # later copies of a (classification, idx)
    dropped_error_steps: int = 0                              # error steps outside their process
    rows_with_dropped_error_steps: int = 0


def _jsonl_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".jsonl" and p.is_file())
        if not files:
            raise DataError(path, None, None, "no .jsonl files in this folder")
        return files
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    return [path]


def _error_steps(rows: Rows, line: Where, rec: dict) -> list[int]:
    errors = rows.get(line, rec, "error_steps", list)
    if not all(isinstance(e, int) and not isinstance(e, bool) for e in errors):
        raise rows.error(line, "error_steps", f"expected 1-based step numbers, got {errors!r}")
    return errors


def _parse_row(rows: Rows, line: Where, rec: dict) -> list[Trajectory]:
    """The row's item (and its `correct` item for a redundency row); DataError if it cannot be scored."""
    category = rows.get(line, rec, "classification")
    idx = rec.get("idx")
    if not isinstance(idx, (str, int)) or isinstance(idx, bool) or str(idx).strip() == "":
        raise rows.error(line, "idx", "missing or not a string/integer")
    steps = rows.steps(line, rec, "modified_process", allow_blank=True)
    errors = _error_steps(rows, line, rec)
    err0 = sorted({e - 1 for e in errors if 1 <= e <= len(steps)})
    where = {"file": rows.path.name, "line": line.line, "idx": idx}
    items = [Trajectory(rows.get(line, rec, "modified_question"), steps, err0[0] if err0 else -1,
                        source=f"prmbench:{category}:{idx}",
                        meta={"classification": category, "error_steps": err0, "question": rec.get("question"),
                              "dropped_error_steps": len(errors) - len([e for e in errors if 1 <= e <= len(steps)]),
                              **where})]
    if category == "redundency":
        items.append(Trajectory(rows.get(line, rec, "original_question"), rows.steps(line, rec, "original_process", allow_blank=True), -1,
                                source=f"prmbench:{CORRECT}:{idx}",
                                meta={"classification": CORRECT, "error_steps": [], "dropped_error_steps": 0, **where}))
    return items


def read_prmbench(path: str | Path, skip_bad_rows: bool = False) -> tuple[list[Trajectory], PRMBenchReport]:
    report = PRMBenchReport()
    items: list[Trajectory] = []
    seen: set[tuple[str, str]] = set()
    for file in _jsonl_files(Path(path)):
        report.files.append(str(file))
        rows = Rows(file, skip_bad_rows)
        for line, rec in rows.records():
            report.rows += 1
            try:
                if not isinstance(rec, dict):
                    raise rows.error(line, None, "row is not a JSON object")
                parsed = _parse_row(rows, line, rec)
            except DataError as e:
                rows.bad(e)
                continue
            for item in parsed:
                key = (item.meta["classification"], str(item.meta["idx"]))
                if key in seen:
                    if item.meta["classification"] != CORRECT:   # a correct item repeats with its idx by design
                        report.duplicate_rows.append(f"{file}, line {line.line}: duplicate ({key[0]}, {key[1]})")
                    continue
                seen.add(key)
                items.append(item)
                report.dropped_error_steps += item.meta["dropped_error_steps"]
                report.rows_with_dropped_error_steps += item.meta["dropped_error_steps"] > 0
        report.skipped_rows += rows.skipped
    report.items = len(items)
    if report.skipped_rows:
        print(f"[prmloop.data] PRMBench: skipped {len(report.skipped_rows)} rows that cannot be scored; "
              f"first: {report.skipped_rows[0]}")
    return items, report


# ------------------------------------------------------------------ scoring
def harness_f1(tp: int, fp: int, fn: int) -> float:
    """mr_eval's F1: precision or recall with a zero denominator is -1; F1 is -1 when p + r == 0."""
    precision = tp / (tp + fp) if tp + fp else -1.0
    recall = tp / (tp + fn) if tp + fn else -1.0
    return 2 * precision * recall / (precision + recall) if precision + recall != 0 else -1.0


@dataclass
class Confusion:
    tp: int = 0   # valid step predicted valid
    fp: int = 0   # erroneous step predicted valid
    tn: int = 0   # erroneous step predicted erroneous
    fn: int = 0   # valid step predicted erroneous
    items: int = 0
    invalid: int = 0
    unscored_steps: int = 0   # steps past a scorer's truncation: uncounted, as in the harness

    def add(self, pred_valid: list[bool], error_steps: set[int]) -> None:
        self.items += 1
        for i, ok in enumerate(pred_valid):
            if i in error_steps:
                self.fp, self.tn = self.fp + ok, self.tn + (not ok)
            else:
                self.tp, self.fn = self.tp + ok, self.fn + (not ok)

    def merge(self, other: "Confusion") -> None:
        for name in ("tp", "fp", "tn", "fn", "items", "invalid", "unscored_steps"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self, f1_only: bool) -> dict:
        # valid class: precision tp/(tp+fp), recall tp/(tp+fn); erroneous: tn/(tn+fn), tn/(tn+fp)
        f1 = harness_f1(self.tp, self.fp, self.fn)
        neg = harness_f1(self.tn, self.fn, self.fp)
        return {"score": f1 if f1_only else 0.5 * f1 + 0.5 * neg, "f1": f1, "negative_f1": neg,
                "items": self.items, "invalid": self.invalid, "steps": self.tp + self.fp + self.tn + self.fn,
                "unscored_steps": self.unscored_steps,
                "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn}


def prmbench_results(items: list[Trajectory], scores: list[list[float] | None]) -> dict:
    """Official PRMBench numbers for these items and their step scores (None = invalid verdict)."""
    per: dict[str, Confusion] = {}
    for t, s in zip(items, scores):
        c = per.setdefault(t.meta["classification"], Confusion())
        if s is None:
            c.invalid += 1
            continue
        s = list(s)[:len(t.steps)]
        c.unscored_steps += len(t.steps) - len(s)
        c.add([v > THRESHOLD for v in s], set(t.meta["error_steps"]))
    overall = Confusion()
    for name, c in per.items():
        if name != CORRECT:
            overall.merge(c)
    categories = {name: c.summary(name in NO_ERROR_CATEGORIES) for name, c in sorted(per.items()) if name != CORRECT}
    scored = [v["score"] for v in categories.values()]
    judged = overall.items + overall.invalid
    return {"overall": overall.summary(False), "categories": categories,
            "correct": per[CORRECT].summary(True) if CORRECT in per else None,
            "category_mean": sum(scored) / len(scored) if scored else float("nan"),
            "invalid_verdicts": overall.invalid,
            "validity_rate": overall.items / judged if judged else float("nan")}


def report_dict(report: PRMBenchReport) -> dict:
    return {"files": len(report.files), "rows": report.rows, "items": report.items,
            "skipped_rows": len(report.skipped_rows), "skipped": report.skipped_rows,
            "duplicate_rows": len(report.duplicate_rows), "duplicates": report.duplicate_rows,
            "dropped_error_steps": report.dropped_error_steps,
            "rows_with_dropped_error_steps": report.rows_with_dropped_error_steps}

