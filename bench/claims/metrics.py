"""A claim's metric of a list of per-problem raw rows (bench/claims/README.md, raw results).

    mean            rows are numbers (a problem's value: pass 0/1, a share of samples)
    first_error_f1  rows are [[label, predicted first error], ...], or their counts {"errors": [named, n],
                    "correct": [named, n]} (f1_counts): ProcessBench F1 of every pair
    auroc_within    rows are [[step label, score], ...] of one problem, or its counts {"wins": w, "pairs": n}:
                    wins over same-problem (right, wrong) step pairs, ties 1/2, pooled over problems
    aulc_f1         rows are {budget: F1 row}: F1 at each budget, trapezoid area / span
    held_out_pass   rows are a problem's held-out pass: their mean (rows tagged metric: held_out_pass)
"""
from __future__ import annotations

import math

import numpy as np

from bench.claims.spec import Metric
from bench.claims.stats import Additive


def _mean(rows: list) -> float:
    return sum(float(r) for r in rows) / len(rows) if rows else math.nan


def _f1(rows: list) -> float:
    """ProcessBench F1 (judges.metrics.processbench_f1) of every pair of the rows, from per-problem hit counts:
    both of its accuracies are sums over items, so the bootstrap adds counts instead of re-scoring pairs."""
    sums = np.zeros(4)
    for problem in rows:
        sums += _remembered(_F1_COUNTS, problem, _f1_counts)
    return float(_f1_of_sums(sums))


def f1_counts(pairs: list) -> dict:
    """A problem's F1 row as its counts: {"errors": [first errors named, erroneous items], "correct":
    [all-correct items called correct, all-correct items]} (the raw file keeps these, not every pair)."""
    e, ne, o, no = _f1_counts(pairs)
    return {"errors": [e, ne], "correct": [o, no]}


def _f1_counts(problem: list | dict) -> tuple[int, int, int, int]:
    """(first errors named, erroneous items, all-correct items called correct, all-correct items)."""
    if isinstance(problem, dict):       # the counts themselves
        return (*map(int, problem["errors"]), *map(int, problem["correct"]))
    labels = [int(y) for y, _ in problem]
    preds = [int(p) for _, p in problem]
    err = [p == y for p, y in zip(preds, labels) if y != -1]
    ok = [p == -1 for p, y in zip(preds, labels) if y == -1]
    return sum(err), len(err), sum(ok), len(ok)


def _auroc_within(rows: list) -> float:
    wins = n = 0.0
    for problem in rows:
        w, m = _problem_pairs(problem)
        wins, n = wins + w, n + m
    return wins / n if n else math.nan


_PAIRS: dict[int, tuple[list, tuple[float, int]]] = {}
_F1_COUNTS: dict[int, tuple[list, tuple[int, int, int, int]]] = {}


def _remembered(cache: dict, problem: list, compute):
    """compute(problem), remembered by the row's identity: the hierarchical bootstrap draws the same rows
    10,000 times, and counting them afresh each time made a claim with thousands of items per unit and arm
    take hours. The entry holds the row, so its id is not reused while remembered; a raw row is read, never
    changed."""
    hit = cache.get(id(problem))
    if hit is not None and hit[0] is problem:
        return hit[1]
    if len(cache) > 1_000_000:
        cache.clear()
    value = compute(problem)
    cache[id(problem)] = (problem, value)
    return value


def _problem_pairs(problem: list | dict) -> tuple[float, int]:
    """(wins, pairs) of one problem's step rows, or the counts themselves."""
    if isinstance(problem, dict):
        return float(problem["wins"]), int(problem["pairs"])
    from prm.quality import _pair_stats
    return _remembered(_PAIRS, problem, lambda rows: _pair_stats([(int(y), float(s)) for y, s in rows]))


def _aulc_f1(rows: list) -> float:
    budgets = sorted({float(b) for r in rows for b in r})
    if len(budgets) < 2:
        raise ValueError(f"aulc_f1 needs >= 2 budgets, got {budgets}")
    return _trapezoid(budgets, [_f1([r[b] for r in rows for b in r if float(b) == budget]) for budget in budgets])


def _trapezoid(budgets: list[float], f1: list):
    """The area under F1 vs budget, divided by the budget span (numbers, or arrays of replicates)."""
    area = sum((b1 - b0) * (f0 + f1_) / 2 for b0, b1, f0, f1_ in zip(budgets, budgets[1:], f1, f1[1:]))
    return area / (budgets[-1] - budgets[0])


def _ratio(sums):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums[..., 1] > 0, sums[..., 0] / np.where(sums[..., 1] > 0, sums[..., 1], 1), np.nan)


def _f1_of_sums(sums):
    """processbench_f1's F1 from summed (err hits, erroneous items, ok hits, all-correct items)."""
    acc_error, acc_correct = _ratio(sums[..., 0:2]), _ratio(sums[..., 2:4])
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * acc_error * acc_correct / (acc_error + acc_correct)
    return np.where(acc_error + acc_correct == 0, 0.0, f1)


def additive(metric: Metric, rows: list) -> Additive | None:
    """The metric as an Additive statistic of per-problem count vectors (stats.hierarchical_bootstrap's fast
    path), given the rows it will see; None where it is not one (aulc_f1 rows of differing budgets)."""
    metric = Metric(metric)
    if metric in (Metric.mean, Metric.held_out_pass):
        return Additive(lambda r: (float(r), 1.0), _ratio)
    if metric == Metric.auroc_within:
        return Additive(_problem_pairs, _ratio)
    if metric == Metric.first_error_f1:
        return Additive(_f1_counts, _f1_of_sums)
    budgets = sorted({float(b) for r in rows for b in r})
    if len(budgets) < 2 or any(sorted(float(b) for b in r) != budgets for r in rows):
        return None

    def counts(row):
        by_budget = {float(b): pairs for b, pairs in row.items()}
        return [c for b in budgets for c in _f1_counts(by_budget[b])]

    def of_sums(sums):
        return _trapezoid(budgets, [_f1_of_sums(sums[..., 4 * i:4 * i + 4]) for i in range(len(budgets))])
    return Additive(counts, of_sums)


def additive_difference(metric: Metric, rows: list) -> Additive | None:
    """additive(metric) of (treatment, control) row pairs: the treatment's statistic minus the control's."""
    one = additive(metric, [r for pair in rows for r in pair])
    if one is None:
        return None
    return Additive(lambda pair: [*one.counts(pair[0]), *one.counts(pair[1])],
                    lambda sums: one.of_sums(sums[..., :sums.shape[-1] // 2]) - one.of_sums(sums[..., sums.shape[-1] // 2:]))


METRICS = {Metric.mean: _mean, Metric.first_error_f1: _f1, Metric.auroc_within: _auroc_within,
           Metric.aulc_f1: _aulc_f1, Metric.held_out_pass: _mean}


def metric_of(metric: Metric):
    return METRICS[Metric(metric)]
