"""How well a step scorer separates correct from erroneous steps, on judged trajectories.

Step labels follow core.steps: a trajectory with first error k contributes steps 0..k-1 as correct and
step k as the error (later steps are not labelled); first error -1 makes every step correct.

    step_auroc         P(score of a correct step > score of an error step), ties count one half, over
                       all pairs pooled across problems (Mann-Whitney U / (n_pos * n_neg)).
    step_auroc_within  the same probability over pairs taken from the same problem (question) only: a
                       scorer that merely learned which problems are hard scores 0.5 here.
    first_error_f1     ProcessBench F1 (judges.metrics) of "first step scored below tau".

F1 depends on tau, and a fixed tau that a scorer's calibration drifts towards makes F1 rise with no better
ranking: `tuned_threshold` picks tau on a validation split (`split_by_problem`) and F1 is read on the rest.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

from judges.metrics import processbench_f1
from core.steps import first_below, labels_from_first_error


def labelled_steps(first_errors: Sequence[int], scores: Sequence[Sequence[float]]) -> list[tuple[int, float]]:
    """(label, score) per labelled step of each trajectory; a scorer may return fewer scores (truncation)."""
    out = []
    for k, s in zip(first_errors, scores):
        labels = labels_from_first_error(k, len(s) if k == -1 else max(len(s), k + 1))
        out += [(y, float(v)) for y, v in zip(labels, s)]
    return out


def _pair_stats(pairs: list[tuple[int, float]]) -> tuple[float, int]:
    """(sum over (correct, error) pairs of [correct > error] + [tie] / 2, number of pairs), in O(n log n)."""
    pos = sorted(v for y, v in pairs if y == 1)
    neg = sorted(v for y, v in pairs if y == 0)
    if not pos or not neg:
        return 0.0, 0
    wins, i, j = 0.0, 0, 0
    for v in pos:  # neg values below v count 1, equal count 1/2
        while i < len(neg) and neg[i] < v:
            i += 1
        j = max(j, i)
        while j < len(neg) and neg[j] == v:
            j += 1
        wins += i + 0.5 * (j - i)
    return wins, len(pos) * len(neg)


def pair_auroc(pairs: list[tuple[int, float]]) -> float:
    """P(a label-1 item scores above a label-0 one), ties half; NaN without both labels."""
    wins, n = _pair_stats(pairs)
    return wins / n if n else math.nan


def step_auroc(first_errors, scores) -> float:
    return pair_auroc(labelled_steps(first_errors, scores))


def step_auroc_within(questions, first_errors, scores) -> float:
    groups: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for q, k, s in zip(questions, first_errors, scores):
        groups[q] += labelled_steps([k], [s])
    wins = n = 0.0
    for pairs in groups.values():
        w, m = _pair_stats(pairs)
        wins, n = wins + w, n + m
    return wins / n if n else math.nan


def first_error_scores(first_errors, scores, threshold: float) -> dict[str, float]:
    """ProcessBench's acc_error, acc_correct and F1 of "first step scored below tau" (the one code path of
    first_error_f1 and scorer_quality)."""
    return processbench_f1([first_below(list(s), threshold) for s in scores], list(first_errors))


def first_error_f1(first_errors, scores, threshold: float) -> float:
    return first_error_scores(first_errors, scores, threshold)["f1"]


def scorer_quality(questions, first_errors, scores, threshold: float = 0.5, prefix: str = "") -> dict[str, float]:
    """AUROCs, first-error F1 and its accuracy on the erroneous items alone (the exact first wrong step
    named; defined even when a set has no all-correct item, where F1 is NaN)."""
    pb = first_error_scores(first_errors, scores, threshold)
    return {f"{prefix}auroc": step_auroc(first_errors, scores),
            f"{prefix}auroc_within": step_auroc_within(questions, first_errors, scores),
            f"{prefix}f1": pb["f1"], f"{prefix}acc_error": pb["acc_error"]}


def split_by_problem(questions: Sequence[str]) -> tuple[list[int], list[int]]:
    """(validation indices, test indices): the first half of the distinct questions (in order of first
    appearance) and every item of theirs to validation, the rest to test; one problem: all to test."""
    order = list(dict.fromkeys(questions))
    if len(order) < 2:
        return [], list(range(len(questions)))
    first = set(order[:len(order) // 2])
    return [i for i, q in enumerate(questions) if q in first], [i for i, q in enumerate(questions) if q not in first]


def tuned_threshold(first_errors, scores, default: float = 0.5) -> float:
    """tau in 0.01..0.99 with the best first-error F1 (the lowest such tau); where F1 is undefined (no
    all-correct item), the best accuracy on the erroneous items; `default` without items."""
    if not len(first_errors):
        return default

    def objective(tau: float) -> float:
        r = first_error_scores(first_errors, scores, tau)
        value = r["acc_error"] if math.isnan(r["f1"]) else r["f1"]
        return -1.0 if math.isnan(value) else value
    return max((i / 100 for i in range(1, 100)), key=objective)


def heldout_quality(questions, first_errors, scores, threshold: float = 0.5, prefix: str = "") -> dict[str, float]:
    """scorer_quality on the test half of a held-out set, F1 at the tau tuned on its validation half
    (`threshold` where the set has a single problem); the tau comes back as <prefix>tau."""
    val, test = split_by_problem(list(questions))
    tau = tuned_threshold([first_errors[i] for i in val], [scores[i] for i in val], threshold) if val else threshold
    pick = lambda xs: [xs[i] for i in test]
    return {**scorer_quality(pick(questions), pick(first_errors), pick(scores), tau, prefix), f"{prefix}tau": tau}
