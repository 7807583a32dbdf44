"""`python -m prm.eval`: ProcessBench and PRMBench for any step scorer (docs/method.md, Metrics).

A scorer maps (questions, steps) to one score in [0, 1] per step. Built-in scorers: a trained PRM
(`prm.path=<dir saved by prm.train>`, or a fresh one for a baseline), or a judge (`judge=rule`
...; its labels through the ledger `judge.ledger_path`, null: <trainer.out_dir>/ledger.sqlite; steps before its first_error score 1, that step 0, the rest 1; an invalid verdict gives None
instead of scores: a wrong prediction on ProcessBench whatever the label; on PRMBench the item is
dropped and counted, as the official harness does).

ProcessBench: pred = first step with score < tau, else -1; per subset acc_error / acc_correct / F1
(judges.metrics.processbench_f1) and the plain mean of the subset F1s. tau is `eval.threshold`, or,
with `eval.tune_on=<subset>`, the F1-best tau on that subset, applied to every subset (the tuning
subset is flagged in the table; the mean is also given without it).
PRMBench: prm.prmbench (the official mr_eval scoring: modified_question + modified_process, per
category 0.5 F1(valid) + 0.5 F1(erroneous), multi_solutions F1(valid) alone, the `correct` category
outside the overall). `eval.prmbench_path` reads a file or a folder of JSONL files (the full release);
`eval.skip_bad_rows=true` counts and names rows that cannot be scored instead of stopping at the first.
Writes <trainer.out_dir>/eval.json and eval.md, prints the table.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Callable, Protocol, Sequence

import hydra
from omegaconf import DictConfig

from core.config import validate
from core.rows import data_root
from core.run import anchored
from core.steps import first_below
from judges.metrics import processbench_f1
from prm.config import EvalConfig, PRMEvalConfig
from prm.data import load_processbench
from prm.prmbench import prmbench_results, read_prmbench, report_dict


class StepScorer(Protocol):
    def __call__(self, questions: list[str], steps: list[list[str]]) -> list[list[float] | None]: ...


def prm_scorer(prm_or_learner, batch_size: int | None = None) -> StepScorer:
    """Step reward = ensemble mean; works with an EnsemblePRM or a PRMLearner (cached features)."""
    def score(questions, steps):
        return [s.mean for s in prm_or_learner.score(questions, steps, batch_size)]
    return score


def judge_scorer(judge, ledger=None) -> StepScorer:
    def score(questions, steps):
        items = list(zip(questions, steps))
        verdicts = ledger.label(judge, items) if ledger is not None else judge.judge_batch(items)
        out = []
        for (_, s), v in zip(items, verdicts):
            k = None if v is None else v.first_error
            if k is None:
                out.append(None)                   # invalid: counted as a wrong prediction
            else:
                out.append([0.0 if i == k else 1.0 for i in range(len(s))])
        return out
    return score


# ------------------------------------------------------------------ ProcessBench
def processbench_preds(scores: list[list[float] | None], tau: float) -> list[int | None]:
    return [None if s is None else first_below(s, tau) for s in scores]


def tune_threshold(scores: list[list[float]], labels: list[int], candidates: Sequence[float] | None = None) -> float:
    """The tau with the best first-error F1 on these items (the smallest on ties). F1 needs both kinds of
    item; where every item is erroneous (a weak policy's samples) it is undefined for every tau, and the
    tau naming the most first errors (acc_error) is taken instead; where none is, the one keeping the most
    all-correct items whole (acc_correct). `candidates`: the taus tried; default the midpoints of the
    observed step scores (a grid of 399 where they are more)."""
    if candidates is None:
        values = sorted({round(v, 4) for s in scores if s for v in s} | {0.0, 1.0})
        candidates = [(a + b) / 2 for a, b in zip(values, values[1:])] or [0.5]
        if len(candidates) > 400:  # a grid is enough; avoids O(n^2) on big subsets
            candidates = [i / 400 for i in range(1, 400)]
    erroneous = sum(y != -1 for y in labels)
    metric = "f1" if 0 < erroneous < len(labels) else "acc_error" if erroneous else "acc_correct"
    best = max(candidates, key=lambda t: _nan0(processbench_f1(processbench_preds(scores, t), labels)[metric]))
    return float(best)


def _nan0(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def spread_sample(items: list, limit: int | None) -> list:
    """`limit` evenly spaced items. ProcessBench files list the erroneous items first, so a plain
    head-of-file slice would contain no all-correct item (F1 undefined)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def load_processbench_sample(name: str, limit: int | None, root: str | None = None, source: str | None = None):
    return spread_sample(load_processbench(name, root=root, source=source), limit)


def evaluate_processbench(scorer: StepScorer, ecfg: EvalConfig, root: str | None = None,
                          progress: Callable | None = None) -> dict:
    data = {name: load_processbench_sample(name, ecfg.limit, root, ecfg.processbench_source) for name in ecfg.subsets}
    scores = {}
    for name, items in data.items():
        scores[name] = scorer([t.question for t in items], [t.steps for t in items])
        if progress:
            progress(name)
    tau, tuned_on = ecfg.threshold, None
    if ecfg.tune_on:
        if ecfg.tune_on not in data:
            tuning = load_processbench_sample(ecfg.tune_on, ecfg.limit, root, ecfg.processbench_source)
            data[ecfg.tune_on] = tuning
            scores[ecfg.tune_on] = scorer([t.question for t in tuning], [t.steps for t in tuning])
        tau, tuned_on = tune_threshold(scores[ecfg.tune_on], [t.first_error for t in data[ecfg.tune_on]]), ecfg.tune_on
    subsets = {name: processbench_f1(processbench_preds(scores[name], tau), [t.first_error for t in items])
               for name, items in data.items()}
    f1s = [r["f1"] for r in subsets.values()]
    held_out = [r["f1"] for name, r in subsets.items() if name != tuned_on]
    return {"threshold": tau, "tuned_on": tuned_on, "subsets": subsets,
            "mean_f1": sum(f1s) / len(f1s) if f1s else math.nan,
            "mean_f1_held_out": sum(held_out) / len(held_out) if held_out else math.nan}


# ------------------------------------------------------------------ PRMBench
def evaluate_prmbench(scorer: StepScorer, limit: int | None = None, root: str | None = None,
                      path: str | None = None, skip_bad_rows: bool = False) -> dict:
    """Official PRMBench numbers (prm.prmbench) plus what loading dropped or skipped (`data`)."""
    items, report = read_prmbench(path or data_root(root) / "prmbench", skip_bad_rows)
    items = spread_sample(items, limit)
    scores = scorer([t.question for t in items], [t.steps for t in items])
    return {**prmbench_results(items, scores), "data": report_dict(report)}


# ------------------------------------------------------------------ reporting
def markdown_table(results: dict, name: str = "") -> str:
    lines = []
    pb = results.get("processbench")
    if pb:
        how = f"tuned on {pb['tuned_on']}" if pb["tuned_on"] else "fixed"
        lines += [f"ProcessBench {name} (tau = {pb['threshold']:.3f}, {how})", "",
                  "| subset | n | acc_error | acc_correct | F1 |", "|---|---|---|---|---|"]
        for sub, r in pb["subsets"].items():
            flag = " (tuning set)" if sub == pb["tuned_on"] else ""
            lines.append(f"| {sub}{flag} | {r['n']} | {r['acc_error']:.3f} | {r['acc_correct']:.3f} | {r['f1']:.3f} |")
        lines.append(f"| mean | | | | {pb['mean_f1']:.3f} |")
        if pb["tuned_on"]:
            lines.append(f"| mean without {pb['tuned_on']} | | | | {pb['mean_f1_held_out']:.3f} |")
    bench = results.get("prmbench")
    if bench:
        d = bench["data"]
        lines += ["", f"PRMBench {name} ({d['items']} items from {d['rows']} rows in {d['files']} files; "
                  f"skipped rows {d['skipped_rows']}, duplicate rows {d['duplicate_rows']}, out-of-range error "
                  f"steps dropped {d['dropped_error_steps']}; invalid verdicts {bench['invalid_verdicts']})", "",
                  "| category | items | steps | F1 (valid) | F1 (erroneous) | score |", "|---|---|---|---|---|---|"]
        rows = [("overall", bench["overall"])] + list(bench["categories"].items())
        rows += [("correct (outside the overall)", bench["correct"])] if bench["correct"] else []
        lines += [f"| {k} | {v['items']} | {v['steps']} | {v['f1']:.3f} | {v['negative_f1']:.3f} | {v['score']:.3f} |"
                  for k, v in rows]
        lines.append(f"| mean over categories | | | | | {bench['category_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def evaluate(scorer: StepScorer, ecfg: EvalConfig, root: str | None, out_dir: str | Path | None,
             name: str = "") -> dict:
    results = {"processbench": evaluate_processbench(scorer, ecfg, root) if ecfg.subsets else None}
    if ecfg.prmbench:
        results["prmbench"] = evaluate_prmbench(scorer, ecfg.prmbench_limit, root, ecfg.prmbench_path,
                                                ecfg.skip_bad_rows)
    table = markdown_table(results, name)
    print(table)
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(results, indent=2))
        (out / "eval.md").write_text(table)
    return results


def build_scorer(cfg: PRMEvalConfig, stack: contextlib.ExitStack) -> tuple[StepScorer, str]:
    if cfg.judge:
        from judges.session import open_judge
        # a judge's labels go through its ledger as in every command: persisted before use, never paid
        # twice; an llm judge is checked (endpoint, key, model) before anything is scored
        judge, ledger = open_judge(cfg.judge, default_path=Path(cfg.trainer.out_dir) / "ledger.sqlite")
        stack.enter_context(ledger)
        return judge_scorer(judge, ledger), f"judge {judge.identity}"
    from prm.model import EnsemblePRM
    prm = EnsemblePRM.from_config(cfg.prm)
    return prm_scorer(prm, cfg.eval.batch_size), f"PRM {cfg.prm.path or cfg.prm.backbone + ' (untrained heads)'}"


@hydra.main(config_path="pkg://configs", config_name="prm_eval", version_base=None)
def main(dcfg: DictConfig) -> None:
    cfg = validate(dcfg, PRMEvalConfig)
    cfg.trainer.out_dir = anchored(cfg.trainer.out_dir)
    root = anchored(cfg.data_root) if cfg.data_root else None
    with contextlib.ExitStack() as stack:
        scorer, name = build_scorer(cfg, stack)
        evaluate(scorer, cfg.eval, root, cfg.trainer.out_dir, name)


if __name__ == "__main__":
    main()
