"""A claim's metric of a list of per-problem raw rows (bench/claims/README.md, raw results).

    mean            rows are numbers (a problem's value: pass 0/1, a share of samples)
    first_error_f1  rows are [[label, predicted first error], ...]: ProcessBench F1 of every pair
    auroc_within    rows are [[step label, score], ...] of one problem, or its counts {"wins": w, "pairs": n}:
                    wins over same-problem (right, wrong) step pairs, ties 1/2, pooled over problems
    aulc_f1         rows are {budget: [[label, predicted], ...]}: F1 at each budget, trapezoid area / span
    held_out_pass   rows are a problem's held-out pass: their mean (rows tagged metric: held_out_pass)
"""
from __future__ import annotations

import math

from bench.claims.spec import Metric


def _mean(rows: list) -> float:
    return sum(float(r) for r in rows) / len(rows) if rows else math.nan


def _f1(rows: list) -> float:
    from judges.metrics import processbench_f1
    pairs = [pair for r in rows for pair in r]
    return processbench_f1([int(p) for _, p in pairs], [int(y) for y, _ in pairs])["f1"] if pairs else math.nan


def _auroc_within(rows: list) -> float:
    wins = n = 0.0
    for problem in rows:
        w, m = _problem_pairs(problem)
        wins, n = wins + w, n + m
    return wins / n if n else math.nan


_PAIRS: dict[int, tuple[list, tuple[float, int]]] = {}


def _problem_pairs(problem: list | dict) -> tuple[float, int]:
    """(wins, pairs) of one problem's step rows, remembered by the row's identity: the hierarchical
    bootstrap draws the same rows 10,000 times, and counting them afresh each time made a claim with ~18k
    steps per unit and arm take hours. The entry holds the row, so its id is not reused while remembered;
    a raw row is read, never changed."""
    if isinstance(problem, dict):       # the counts themselves
        return float(problem["wins"]), int(problem["pairs"])
    hit = _PAIRS.get(id(problem))
    if hit is not None and hit[0] is problem:
        return hit[1]
    from prm.quality import _pair_stats
    if len(_PAIRS) > 1_000_000:
        _PAIRS.clear()
    stats = _pair_stats([(int(y), float(s)) for y, s in problem])
    _PAIRS[id(problem)] = (problem, stats)
    return stats


def _aulc_f1(rows: list) -> float:
    budgets = sorted({float(b) for r in rows for b in r})
    if len(budgets) < 2:
        raise ValueError(f"aulc_f1 needs >= 2 budgets, got {budgets}")
    f1 = [_f1([r[b] for r in rows for b in r if float(b) == budget]) for budget in budgets]
    area = sum((b1 - b0) * (f0 + f1_) / 2 for b0, b1, f0, f1_ in zip(budgets, budgets[1:], f1, f1[1:]))
    return area / (budgets[-1] - budgets[0])


METRICS = {Metric.mean: _mean, Metric.first_error_f1: _f1, Metric.auroc_within: _auroc_within,
           Metric.aulc_f1: _aulc_f1, Metric.held_out_pass: _mean}


def metric_of(metric: Metric):
    return METRICS[Metric(metric)]
