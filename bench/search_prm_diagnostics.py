"""Does the PRM separate right from wrong samples? Read off `python -m rl.search` best-of-N records.

For every best_of_n record file under a search out_dir: pass@n (some sample correct: what a perfect
selector would score), pass@1 (mean per-sample accuracy), the share of samples with an answer, and the
ROC AUC of the solution score (step aggregate `last` and `min` of the ensemble mean, and the ensemble
std of the last step) for correct vs wrong answered samples. AUC 0.5 = no signal: search cannot beat
sampling then, whatever the method.

    python -m bench.search_prm_diagnostics outputs/bench_search/arithmetic [more out_dirs]
    SEARCH_DIAGNOSTICS_METHODS=beam,dvts python -m bench.search_prm_diagnostics ...   # their outputs instead
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from statistics import mean, median

from core.answers import AnswerChecker


def auc(pos: list[float], neg: list[float]) -> float:
    """P(score of a correct sample > score of a wrong one), ties count half."""
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def diagnose(path: Path, checker: AnswerChecker) -> dict:
    recs = [json.loads(line) for line in path.open()]
    sols = [(r, s) for r in recs for s in r["solutions"]]
    ok = checker.check_many([r["reference"] for r, _ in sols], [s["answer"] for _, s in sols])
    answered = [(s, o) for (_, s), o in zip(sols, ok) if s["answer"] is not None and s["mean"]]
    right = [s for s, o in answered if o]
    wrong = [s for s, o in answered if not o]
    per_problem, i = [], 0
    for r in recs:
        per_problem.append(any(ok[i:i + len(r["solutions"])]))
        i += len(r["solutions"])
    return {
        "file": path.name, "problems": len(recs), "samples": len(sols),
        "pass@n": sum(per_problem) / len(recs), "pass@1": sum(map(bool, ok)) / len(sols),
        "answered": len(answered) / len(sols), "correct_answered": len(right),
        "auc_last": auc([s["mean"][-1] for s in right], [s["mean"][-1] for s in wrong]),
        "auc_min": auc([min(s["mean"]) for s in right], [min(s["mean"]) for s in wrong]),
        "auc_neg_std": auc([-s["std"][-1] for s in right], [-s["std"][-1] for s in wrong]),
        "median_last": median(s["mean"][-1] for s, _ in answered) if answered else float("nan"),
        "median_std": median(s["std"][-1] for s, _ in answered) if answered else float("nan"),
        "mean_last_correct": mean(s["mean"][-1] for s in right) if right else float("nan"),
        "mean_last_wrong": mean(s["mean"][-1] for s in wrong) if wrong else float("nan"),
    }


def main() -> None:
    checker = AnswerChecker()
    try:
        for out_dir in sys.argv[1:] or ["outputs/bench_search/arithmetic"]:
            print(f"## {out_dir}\n")
            print("| records | pass@n | pass@1 | answered | correct answered | AUC last | AUC min | AUC -std "
                  "| median last | median std | last: correct / wrong |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            methods = os.environ.get("SEARCH_DIAGNOSTICS_METHODS", "best_of_n").split(",")
            for path in sorted(p for m in methods for p in Path(out_dir, "records").glob(f"{m}-*.jsonl")):
                d = diagnose(path, checker)
                print(f"| {d['file']} | {d['pass@n']:.2f} | {d['pass@1']:.3f} | {d['answered']:.2f} | "
                      f"{d['correct_answered']} | {d['auc_last']:.3f} | {d['auc_min']:.3f} | {d['auc_neg_std']:.3f} | "
                      f"{d['median_last']:.3f} | {d['median_std']:.4f} | "
                      f"{d['mean_last_correct']:.3f} / {d['mean_last_wrong']:.3f} |")
            print()
    finally:
        checker.close()


if __name__ == "__main__":
    main()
