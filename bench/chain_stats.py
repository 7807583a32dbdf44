"""Seed statistics for the chain testbed benchmarks: mean with a 95 % t-interval, paired differences."""
from __future__ import annotations

import math
import statistics

# two-sided 95 % Student-t quantiles by degrees of freedom (no scipy in the project's environment)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    if df in T95:
        return T95[df]
    below = [k for k in T95 if k <= df]
    return T95[max(below)] if below else 1.96


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % t-interval); NaNs dropped; half-width NaN below 2 values."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    if len(xs) < 2:
        return xs[0], math.nan
    return statistics.fmean(xs), t95(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))


def fmt(xs: list[float], digits: int = 3) -> str:
    m, h = mean_ci(xs)
    return f"{m:.{digits}f} ± {h:.{digits}f}" if not math.isnan(h) else f"{m:.{digits}f}"


def paired(a: dict, b: dict) -> list[float]:
    """a[seed] - b[seed] over the seeds both have."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]
