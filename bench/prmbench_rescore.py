"""PRMBench scored the official way (prm.prmbench) next to the definition prmloop used previously,
with the same scorer in one run, so the change in the figure is measured rather than asserted.

The previous definition: the PRM read `question` (not `modified_question`); an invalid verdict counted as
"every step erroneous"; every category, multi_solutions included, scored 0.5 F1(valid) + 0.5
F1(erroneous) with an empty class's F1 = 0; no `correct` category; "all" pooled every item.

    python -m bench.prmbench_rescore                       # the rule judge on the bundled subset
    python -m bench.prmbench_rescore --prm-path outputs/prm_train/prm
    python -m bench.prmbench_rescore --path <folder of the full release> --skip-bad-rows
"""
from __future__ import annotations

import argparse

from core.rows import data_root
from prm.eval import judge_scorer, prm_scorer
from prm.prmbench import CORRECT, prmbench_results, read_prmbench


def _f1_zero(pred: list[bool], gold: list[bool]) -> float:
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def previous_definition(items, scores) -> dict:
    pooled: dict[str, tuple[list[bool], list[bool]]] = {"all": ([], [])}
    for t, s in zip(items, scores):
        errors = set(t.meta["error_steps"])
        gold = [i not in errors for i in range(len(t.steps))]
        pred = [False] * len(gold) if s is None else [v > 0.5 for v in s][:len(gold)]
        for key in ("all", t.meta["classification"]):
            pooled.setdefault(key, ([], []))
            pooled[key][0].extend(pred)
            pooled[key][1].extend(gold[:len(pred)])
    return {k: 0.5 * _f1_zero(p, g) + 0.5 * _f1_zero([not x for x in p], [not x for x in g])
            for k, (p, g) in pooled.items()}


def build_scorer(args):
    if args.prm_path:
        from prm.model import EnsemblePRM
        return prm_scorer(EnsemblePRM.load(args.prm_path), args.batch_size), f"PRM {args.prm_path}"
    import judges.rule  # noqa: F401  (registers the rule judge)
    from judges.registry import make_judge
    judge = make_judge({"name": "rule"})
    return judge_scorer(judge), f"judge {judge.identity}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", default=str(data_root() / "prmbench"), help="a PRMBench JSONL file or folder")
    ap.add_argument("--prm-path", default=None, help="a PRM saved by prm.train (default: the rule judge)")
    ap.add_argument("--skip-bad-rows", action="store_true")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    scorer, name = build_scorer(args)
    items, report = read_prmbench(args.path, args.skip_bad_rows)
    new = prmbench_results(items, scorer([t.question for t in items], [t.steps for t in items]))
    old_items = [t for t in items if t.meta["classification"] != CORRECT]
    unmodified = [t.meta["question"] for t in old_items]
    old = previous_definition(old_items, scorer(unmodified, [t.steps for t in old_items]))
    print(f"PRMBench, {name}: {report.rows} rows, {report.items} items; invalid verdicts {new['invalid_verdicts']}; "
          f"skipped rows {len(report.skipped_rows)}, duplicates {len(report.duplicate_rows)}, "
          f"out-of-range error steps dropped {report.dropped_error_steps}\n")
    print("| category | previous definition | official (now) | items |\n|---|---|---|---|")
    print(f"| overall | {old['all']:.3f} | {new['overall']['score']:.3f} | {new['overall']['items']} |")
    for cat, v in new["categories"].items():
        print(f"| {cat} | {old.get(cat, float('nan')):.3f} | {v['score']:.3f} | {v['items']} |")
    if new["correct"]:
        print(f"| correct (outside the overall) | - | {new['correct']['score']:.3f} | {new['correct']['items']} |")
    print(f"| mean over categories | - | {new['category_mean']:.3f} | |")


if __name__ == "__main__":
    main()
