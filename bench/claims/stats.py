"""Intervals and decisions of a claims table (bench/claims/README.md).

    paired_t(diffs)                 mean of per-seed paired differences, its t-interval and p-value
    hierarchical_bootstrap(data)    resample seeds, then problems within the set: the interval that carries
                                    problem variance as well as seed variance
    holm(pvalues)                   Holm's step-down adjusted p-values over one table's comparisons
    decide(...)                     holds / fails / undecided under a pre-registered rule

No scipy in the project's environment: Student's t comes from the regularized incomplete beta function
(continued fraction, Numerical Recipes 6.4), its quantile by bisection.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t (bisection on t_cdf, to 1e-10)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_quantile: q must be in (0, 1), got {q}")
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
        if hi - lo < 1e-10:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    p_value: float = math.nan   # one-sided, for "the effect exceeds the margin" (see decide)

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired_t(diffs: Sequence[float], level: float = 0.95, margin: float = 0.0) -> Interval:
    """The t-interval of the mean per-seed difference and the one-sided p-value of mean <= margin
    (small when the effect clearly exceeds the margin). Needs two seeds or more."""
    xs = [float(x) for x in diffs]
    if len(xs) < 2:
        raise ValueError(f"paired_t: needs >= 2 seeds, got {len(xs)}")
    mean, n = statistics.fmean(xs), len(xs)
    se = statistics.stdev(xs) / math.sqrt(n)
    if se == 0.0:
        return Interval(mean, mean, mean, 0.0 if mean > margin else 1.0)
    half = t_quantile(0.5 + level / 2.0, n - 1) * se
    return Interval(mean, mean - half, mean + half, 1.0 - t_cdf((mean - margin) / se, n - 1))


Data = Mapping[str, Mapping[str, object]]   # seed -> problem -> that problem's raw row(s) in that seed


def _seed_mean(rows: Sequence[object]) -> float:
    return float(np.mean(np.asarray(rows, dtype=float)))


@dataclass(frozen=True)
class Additive:
    """A statistic of a set of rows that is a function of the sum of per-row count vectors (a mean: value
    and 1; an AUROC over pairs: wins and pairs; an F1: hits and items per group). The bootstrap then adds
    count vectors with numpy instead of re-scoring the drawn rows 10,000 times; the draws and the result
    are those of the row-by-row statistic (counts add exactly; shares of a mean up to float rounding)."""
    counts: Callable[[object], Sequence[float]]       # one row -> its count vector (length k)
    of_sums: Callable[[np.ndarray], np.ndarray]       # sums (..., k) -> the statistic (...)


def hierarchical_bootstrap(data: Data, statistic: Callable[[list], float] = _seed_mean, reps: int = 10_000,
                           seed: int = 0, level: float = 0.95, margin: float = 0.0,
                           additive: Additive | None = None) -> Interval:
    """Percentile interval of mean over seeds of statistic(that seed's problem rows), resampling seeds
    with replacement, then problems with replacement. Where every seed ran the same problems (a crossed
    design: the problem effect is shared by the seeds) one problem resample serves all drawn seeds;
    otherwise each drawn seed resamples its own problems. p-value: the share of replicates <= margin.
    `statistic` gets a list of rows (one per drawn problem): the mean by default, or any set-level
    metric (F1, AUROC) of the rows; `additive`, where given, computes the same statistic from summed
    counts. Deterministic for a given `seed`."""
    seeds = sorted(data)
    if not seeds or any(not data[s] for s in seeds):
        raise ValueError("hierarchical_bootstrap: every seed needs at least one problem")
    problems = {s: sorted(data[s]) for s in seeds}
    crossed = all(problems[s] == problems[seeds[0]] for s in seeds)
    rng = np.random.default_rng(seed)
    point = float(np.mean([statistic([data[s][p] for p in problems[s]]) for s in seeds]))
    counts = None if additive is None else [
        np.asarray([additive.counts(data[s][p]) for p in problems[s]], dtype=float) for s in seeds]
    if counts is not None and crossed:
        counts = np.stack(counts)                       # (seeds, problems, k)
    reps_out = np.empty(reps)
    for r in range(reps):
        drawn = rng.integers(0, len(seeds), len(seeds))
        shared = rng.integers(0, len(problems[seeds[0]]), len(problems[seeds[0]])) if crossed else None
        if counts is None:
            values = []
            for i in drawn:
                s = seeds[i]
                idx = shared if crossed else rng.integers(0, len(problems[s]), len(problems[s]))
                values.append(statistic([data[s][problems[s][j]] for j in idx]))
        elif crossed:   # how often each problem was drawn, times every seed's counts; the drawn seeds' rows
            times = np.bincount(shared, minlength=len(shared))
            values = additive.of_sums(np.tensordot(times, counts, ([0], [1]))[drawn])
        else:
            values = additive.of_sums(np.stack([
                np.bincount(rng.integers(0, len(problems[seeds[i]]), len(problems[seeds[i]])),
                            minlength=len(problems[seeds[i]])) @ counts[i] for i in drawn]))
        reps_out[r] = np.mean(values)
    low, high = np.quantile(reps_out, [(1 - level) / 2, (1 + level) / 2])
    return Interval(point, float(low), float(high), float(np.mean(reps_out <= margin)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values: sorted ascending, p_(i) * (m - i + 1) (1-based i), made monotone by a
    running maximum, capped at 1; returned in the input order. Reject where adjusted <= alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


class Status(StrEnum):
    holds = "holds"
    fails = "fails"
    undecided = "undecided"
    incomplete = "incomplete"      # some pre-registered units have not run: shown, not decided
    not_run = "pre-registered, not yet run"
    waiting = "pre-registered, waits for"   # its file's waits_for: not run until that is known


def decide(t: Interval, boot: Interval, adjusted_p: float, margin: float, alpha: float) -> Status:
    """holds: the Holm-adjusted p-value (the larger of the paired-t and the bootstrap one) is <= alpha;
    fails: both intervals lie at or below the margin (the effect is shown not to exceed it);
    undecided: anything else (an interval that straddles the margin)."""
    if adjusted_p <= alpha:
        return Status.holds
    if t.high <= margin and boot.high <= margin:
        return Status.fails
    return Status.undecided
