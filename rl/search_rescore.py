"""Best-of-N under another PRM on the very same samples (`bench/rescore_bon.py` drives it).

Best-of-N selection depends only on the samples and their step scores, so two PRMs compare on one
sample set at no generation cost (beam search and DVTS cannot: the PRM steers what is generated).
The source records are only read: new records, in rl.search's format, go under `dst` with the new
step scores, choices and correctness, `prm` and `rescored_from` set, and a stamp of their own. A row's
cost is the source's (the samples' generation) but for scorer_forward_tokens: the new scorer's positions.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from core.steps import split_steps
from rl.search import choices, write_records
from rl.search_methods import SearchCompute, SearchOutcome
from rl.search_select import ScoreSpec, Solution, canonical_answer

KEPT = ("source", "question", "reference", "method", "n", "betas", "aggregate", "seed", "trace", "cost",
        "batch_seconds")


def rescore_best_of_n(src: Path, dst: Path, prm, prm_name: str, checker, aggregate: str | None = None) -> list[Path]:
    """Every best-of-N record file under src/records, re-scored with `prm` (anything with the PRM's
    score(questions, steps), e.g. prm.confidence.PolicyConfidence) into dst/records (greedy records,
    which need no PRM, are copied). `aggregate`: choose under this step aggregation instead of the
    source's. Returns the files written."""
    written = []
    for path in sorted(Path(src, "records").glob("*.jsonl")):
        recs = [json.loads(line) for line in path.open()]
        out = Path(dst, "records", path.name)
        if recs and recs[0]["method"] == "greedy":   # the floor needs no PRM
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, out)
        elif recs and recs[0]["method"] == "best_of_n":
            write_records(out, rescored(recs, prm, prm_name, checker, path, aggregate))
            print(f"[rescore] {path.name}: {sum(len(r['solutions']) for r in recs)} samples re-scored", flush=True)
        else:
            continue
        written.append(out)
    return written


def record_solutions(rec: dict) -> list[Solution]:
    """A record's samples as Solutions (answer and canonical key as recorded; no step scores)."""
    return [Solution(split_steps(s["text"], fallback=False), s["tokens"], answer=s["answer"],
                     key=canonical_answer(s["answer"])) for s in rec["solutions"]]


def reselected(rec: dict, checker, aggregate: str, selectors: list[str] | None = None,
               betas: list[float] | None = None) -> list[dict]:
    """One best-of-N record's rows chosen again from its own stored step scores under another step
    aggregation (ScoreSpec(aggregate, beta) per beta; default the record's betas and selectors), each row
    correct by the answer checker: what another aggregate picks from the same samples, with no PRM call."""
    sols = record_solutions(rec)
    for sol, s in zip(sols, rec["solutions"]):
        sol.mean, sol.std = list(s.get("mean") or []), list(s.get("std") or [])
    selectors = selectors or sorted({row["label"].split("/")[1].split(" ")[0] for row in rec["results"]})
    specs = [ScoreSpec(aggregate, b) for b in (rec["betas"] if betas is None else betas)]
    rows = choices("best_of_n", SearchOutcome(sols, SearchCompute()), rec["n"], selectors, specs)
    for row, ok in zip(rows, checker.check_many([rec["reference"]] * len(rows), [r["answer"] for r in rows])):
        row["correct"] = ok
    return rows


def rescored(recs: list[dict], prm, prm_name: str, checker, path: Path, aggregate: str | None = None) -> list[dict]:
    sols = [record_solutions(r) for r in recs]
    flat = [(r["question"], s) for r, group in zip(recs, sols) for s in group if s.steps]
    for (_, sol), sc in zip(flat, prm.score([q for q, _ in flat], [s.steps for _, s in flat])):
        sol.mean, sol.std = list(sc.mean), list(sc.std)
        sol.scorer_forward_tokens = getattr(sc, "forward_tokens", 0)
    aggregate = aggregate or recs[0]["aggregate"]
    specs = [ScoreSpec(aggregate, b) for b in recs[0]["betas"]]
    selectors = sorted({row["label"].split("/")[1].split(" ")[0] for row in recs[0]["results"]})
    lines = []
    for rec, group in zip(recs, sols):
        rows = choices("best_of_n", SearchOutcome(group, SearchCompute()), rec["n"], selectors, specs)
        verdicts = checker.check_many([rec["reference"]] * len(rows), [r["answer"] for r in rows])
        spent = {(r["label"], r["n"]): r["cost"] for r in rec["results"]}   # generation cost: the samples'
        for row, ok in zip(rows, verdicts):
            rescoring = row["cost"]["scorer_forward_tokens"]    # this scorer's positions, not the source's
            row["correct"], row["cost"] = ok, {**spent[(row["label"], row["n"])], "scorer_forward_tokens": rescoring}
        stamp = hashlib.sha256(f"{rec.get('stamp')}|{prm_name}|{aggregate}".encode()).hexdigest()[:16]
        lines.append({**{k: rec[k] for k in KEPT if k in rec}, "aggregate": aggregate, "results": rows, "prm": prm_name,
                      "solutions": [{**s, "mean": g.mean, "std": g.std} for s, g in zip(rec["solutions"], group)],
                      "rescored_from": str(path), "stamp": stamp})
    return lines
