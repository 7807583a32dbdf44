"""The data model (docs/method.md, Data model and steps) and loaders for every dataset prmloop reads.

Problem     a question with an optional reference answer.
Trajectory  a question plus its solution steps and, when labelled, the first-error index
            (0-based; -1 = all steps correct; None = unlabelled).

Every loader raises DataError naming file, 1-based line (a table's row) and field on malformed input
(not UTF-8, not JSON, a field missing or wrong); with skip_bad_rows=True it counts bad rows instead
(see `last_skipped`) and carries on.
"""
from __future__ import annotations

import re
from pathlib import Path

from core.rows import (PROCESSBENCH_SUBSETS, DataError, Rows, Where, data_root, finish_rows, load_processbench_rows,
                       rows_of)
from tasks.problems import Trajectory


# The public datasets behind the loaders, as `source` values (a hub is not reachable from this project's
# machines; the same rows are under data_root): GSM8K "hf:openai/gsm8k:main", MATH-500
# "hf:HuggingFaceH4/MATH-500", ProcessBench "hf:Qwen/ProcessBench" (split = the subset).


# ---------------------------------------------------------------- labelled trajectories
def load_processbench(subset: str, root: str | Path | None = None, skip_bad_rows: bool = False,
                      limit: int | None = None, source: str | None = None) -> list[Trajectory]:
    """`source`: None = <data_root>/processbench/<subset>.json; `hf:Qwen/ProcessBench` = the hub's split
    `subset`; a file = that file."""
    if subset not in PROCESSBENCH_SUBSETS:
        raise ValueError(f"ProcessBench subset '{subset}' unknown; use one of {PROCESSBENCH_SUBSETS}")
    rows = rows_of(source, data_root(root) / "processbench" / f"{subset}.json", subset, skip_bad_rows)
    path = rows.path
    records, skipped = load_processbench_rows(path, skip_bad_rows, rows)  # the loader judges.eval uses too
    items = [Trajectory(r["problem"], r["steps"], r["label"], source=f"processbench/{subset}:{r['id']}",
                        generator=r["generator"], meta={"final_answer_correct": r["final_answer_correct"]})
             for r in records]
    return finish_rows(Rows(path, skip_bad_rows, skipped), items)[:limit]


def load_trajectories_jsonl(path: str | Path, skip_bad_rows: bool = False) -> list[Trajectory]:
    """prmloop's own format (what the judge ledger exports): question, steps, first_error, ..."""
    rows = rows_of(str(path), Path(path), "train", skip_bad_rows)

    def parse(i: int, rec: dict) -> Trajectory:
        steps = rows.steps(i, rec, "steps")
        label = rows.first_error(i, rec, "first_error", len(steps)) if rec.get("first_error") is not None else None
        meta = rec.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise rows.error(i, "meta", f"expected an object, got {type(meta).__name__}")
        return Trajectory(rows.get(i, rec, "question"), steps, label, rec.get("reference_answer"),
                          rec.get("source", f"{Path(path).name}:{i}"), rec.get("generator", ""), rec.get("round"),
                          meta or {})

    return finish_rows(rows, rows.parse(parse))


def load_trl_prm(path: str | Path, skip_bad_rows: bool = False) -> list[Trajectory]:
    """TRL's stepwise-supervision format: prompt, completions (steps), labels (one bool per step)."""
    rows = Rows(Path(path), skip_bad_rows)

    def parse(i: int, rec: dict) -> Trajectory:
        steps = rows.steps(i, rec, "completions")
        labels = rows.get(i, rec, "labels", list)
        if len(labels) != len(steps) or not all(isinstance(x, bool) or x in (0, 1) for x in labels):
            raise DataError(rows.path, i, "labels", f"need {len(steps)} booleans, got {labels!r}")
        first = next((j for j, ok in enumerate(labels) if not ok), -1)
        return Trajectory(rows.get(i, rec, "prompt"), steps, first, source=f"{Path(path).name}:{i}")

    return finish_rows(rows, rows.parse(parse))


_SHEPHERD_STEP = re.compile(r"Step \d+:\s*")


def load_math_shepherd(path: str | Path, skip_bad_rows: bool = False) -> list[Trajectory]:
    """Math-Shepherd: `input` has steps ending in the tag 'ки'; `label` is the same text with +/- tags."""
    rows = Rows(Path(path), skip_bad_rows)

    def parse(i: int, rec: dict) -> Trajectory:
        text, labelled = rows.get(i, rec, "input"), rows.get(i, rec, "label")
        chunks = text.split("ки")[:-1]
        if not chunks:
            raise DataError(rows.path, i, "input", "no step tagged with 'ки'")
        first_step = _SHEPHERD_STEP.search(chunks[0])
        if not first_step:
            raise DataError(rows.path, i, "input", "no 'Step 1:' marker")
        question = chunks[0][: first_step.start()].strip()
        steps = [_SHEPHERD_STEP.sub("", c, count=1).strip() for c in [chunks[0][first_step.start():]] + chunks[1:]]
        tags, pos = [], 0
        for c in chunks:  # the label text is the input with each 'ки' replaced by '+' or '-'
            pos += len(c)
            tag = labelled[pos:pos + 1]
            if tag not in ("+", "-"):
                raise DataError(rows.path, i, "label", f"expected '+' or '-' at char {pos}, found {tag!r}")
            tags.append(tag == "+")
            pos += 1
        first = next((j for j, ok in enumerate(tags) if not ok), -1)
        return Trajectory(question, steps, first, source=f"math-shepherd:{i}", meta={"task": rec.get("task")})

    return finish_rows(rows, rows.parse(parse))


def load_prmbench(path: str | Path | None = None, root: str | Path | None = None, skip_bad_rows: bool = False,
                  limit: int | None = None) -> list[Trajectory]:
    """PRMBench items as the official harness reads them (prm.prmbench.read_prmbench; counts in its report)."""
    from prm.prmbench import read_prmbench

    items, _ = read_prmbench(path or data_root(root) / "prmbench", skip_bad_rows)
    return items[:limit]


# ---------------------------------------------------------------- PRM800K step rows -> trajectories
NEUTRAL_AS = {"correct": 1, "error": 0}


def load_prm800k(split: str = "train", root: str | Path | None = None, neutral_as: str = "correct",
                 skip_bad_rows: bool = False, limit: int | None = None) -> list[Trajectory]:
    """Regroup PRM800K phase-1 step rows into labelled trajectories.

    A row is (problem, previous steps, rated next step). A trajectory is a leaf row (no other row
    continues its chain) with its previous steps. Previous steps were rated +1 (the chain went on) or
    were human replacements (unrated: correct), so only the last step can be wrong: rating -1 is an
    error; rating 0 ("neutral") counts as `neutral_as` ('correct', the usual choice, or 'error').
    Duplicate trajectories merge; ones whose duplicates disagree on the label are dropped.
    Phase-1 train gives 32,021 trajectories over 900 problems this way (28 conflicting ones dropped).
    """
    import pyarrow.parquet as pq

    if neutral_as not in NEUTRAL_AS:
        raise ValueError(f"neutral_as must be one of {sorted(NEUTRAL_AS)}, got '{neutral_as}'")
    name = {"train": "phase1_train_plus", "test": "phase1_test"}.get(split, split)
    path = data_root(root) / "prm800k" / f"{name}.stepwise-critic.parquet"
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    table = pq.read_table(path, columns=["instruction", "responses", "next_response", "answer", "rating"])
    rows = Rows(path, skip_bad_rows)
    chains: list[tuple[int, str, tuple[str, ...], float | None, str | None]] = []
    for n, rec in enumerate(table.to_pylist()):
        i = Where(n + 1, unit="row")  # 1-based table row
        try:
            question = rows.get(i, rec, "instruction")
            step = rows.get(i, rec, "next_response")
            prev = rec.get("responses")
            if prev is None or not all(isinstance(s, str) for s in prev):
                raise DataError(path, i, "responses", "expected a list of strings")
            rating = rec.get("rating")
            if rating not in (None, -1, 0, 1):
                raise DataError(path, i, "rating", f"expected -1, 0, 1 or null, got {rating!r}")
            chains.append((i, question, tuple(prev) + (step,), rating, rec.get("answer")))
        except DataError as e:
            rows.bad(e)
    prefixes = {(q, steps[:-1]) for _, q, steps, _, _ in chains}
    merged: dict[tuple[str, tuple[str, ...]], int | None] = {}  # None marks a conflict
    for _, q, steps, rating, _ in chains:
        if (q, steps) in prefixes:
            continue  # some chain continues from this one: not a leaf
        ok = 1 if rating is None or rating == 1 else (0 if rating == -1 else NEUTRAL_AS[neutral_as])
        label = -1 if ok else len(steps) - 1
        key = (q, steps)
        merged[key] = label if key not in merged or merged[key] == label else None
    out = [Trajectory(q, list(steps), label, source=f"prm800k/{split}:{n}")
           for n, ((q, steps), label) in enumerate(merged.items()) if label is not None]
    return finish_rows(rows, out)[:limit]


def load_pool(name: str, path: str | None = None, root: str | Path | None = None, subset: str = "gsm8k",
              **kw) -> list[Trajectory]:
    """The pool a config names (pool.name): prm800k | processbench (pool.subset) | jsonl | trl | math_shepherd.
    `path`: the file of a jsonl/trl/math_shepherd pool; for processbench a `source` (a file or hf:<hub id>)."""
    if name == "prm800k":
        return load_prm800k(root=root, **kw)
    if name == "processbench":
        return load_processbench(subset, root=root, source=path, **kw)
    loaders = {"jsonl": load_trajectories_jsonl, "trl": load_trl_prm, "math_shepherd": load_math_shepherd}
    if name not in loaders or not path:
        raise ValueError(f"pool.name={name!r} unknown or needs pool.path; pools: prm800k, processbench, "
                         f"{', '.join(loaders)}")
    return loaders[name](path, **kw)

