"""bench/claims/stats.py pinned on inputs small enough to compute by hand."""
import math
import statistics

import pytest

from bench.claims.stats import (
    Interval,
    Status,
    decide,
    hierarchical_bootstrap,
    holm,
    paired_t,
    t_cdf,
    t_quantile,
)

try:
    from scipy import stats as scipy_stats
except ImportError:   # the project's environment has no scipy: the printed tables' values instead
    scipy_stats = None

# two-sided 95 % quantiles of Student's t (any printed table; scipy.stats.t.ppf(0.975, df))
T975 = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105, 9: 2.262157163, 29: 2.045229642}


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_the_table(df):
    expected = scipy_stats.t.ppf(0.975, df) if scipy_stats else T975[df]
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-8)
    assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-10)


def test_t_cdf_is_symmetric_and_known_at_one_df():
    # df = 1 is the Cauchy distribution: P(T <= t) = 1/2 + atan(t) / pi
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert t_cdf(t, 7) + t_cdf(-t, 7) == pytest.approx(1.0, abs=1e-12)


def test_paired_t_interval_by_hand():
    # diffs 0.1, 0.2, 0.3: mean 0.2, sd 0.1, se 0.1 / sqrt(3); half-width t(0.975, 2) * se
    r = paired_t([0.1, 0.2, 0.3])
    half = T975[2] * 0.1 / math.sqrt(3)
    assert (r.mean, r.low, r.high) == pytest.approx((0.2, 0.2 - half, 0.2 + half), abs=1e-9)
    # one-sided p of mean <= 0: P(T_2 > 0.2 / se) = P(T_2 > 2 sqrt 3); closed form for df = 2
    t = 0.2 / (0.1 / math.sqrt(3))
    assert r.p_value == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), abs=1e-10)
    assert paired_t([0.1, 0.2, 0.3], margin=0.2).p_value == pytest.approx(0.5, abs=1e-12)


def test_paired_t_needs_two_seeds():
    with pytest.raises(ValueError, match=">= 2 seeds"):
        paired_t([0.3])


def test_holm_by_its_definition():
    p = [0.01, 0.04, 0.03, 0.20]
    # sorted 0.01, 0.03, 0.04, 0.20 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08, 0.20; running max -> .04 .09 .09 .20
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])   # capped at 1
    assert holm([0.02]) == [0.02]                           # one comparison: unchanged


def crossed(values: dict[str, list[float]]) -> dict:
    return {s: {f"p{i}": v for i, v in enumerate(vs)} for s, vs in values.items()}


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    data = crossed({"s0": [1, 0, 1, 1, 0, 1], "s1": [0, 0, 1, 1, 1, 1], "s2": [1, 1, 1, 0, 0, 1]})
    a = hierarchical_bootstrap(data, reps=2000, seed=3)
    assert a == hierarchical_bootstrap(data, reps=2000, seed=3)
    assert a != hierarchical_bootstrap(data, reps=2000, seed=4)
    mean = statistics.fmean(v for s in data.values() for v in s.values())
    assert a.mean == pytest.approx(mean)
    assert a.low < mean < a.high
    assert 0.0 <= a.low and a.high <= 1.0     # a mean of 0/1 values stays in [0, 1]


def test_bootstrap_carries_problem_variance_that_seeds_alone_miss():
    # every seed gives the same per-problem values: the seeds disagree on nothing, the problems do
    same = [1, 0, 1, 0, 1, 0, 1, 0]
    data = crossed({"s0": same, "s1": same, "s2": same})
    t = paired_t([statistics.fmean(same)] * 3)
    boot = hierarchical_bootstrap(data, reps=2000, seed=0)
    assert t.high - t.low == 0.0
    assert boot.high - boot.low > 0.2      # about 2 * 1.96 * 0.5 / sqrt(8) = 0.69 wide


def test_bootstrap_without_problem_variance_is_a_seed_bootstrap():
    # one value per seed, constant over problems: the interval is the seed means' spread, inside [min, max]
    data = {s: {f"p{i}": v for i in range(5)} for s, v in (("a", 0.1), ("b", 0.2), ("c", 0.6))}
    boot = hierarchical_bootstrap(data, reps=2000, seed=0)
    assert boot.mean == pytest.approx(0.3)
    assert 0.1 <= boot.low < 0.3 < boot.high <= 0.6


def test_bootstrap_statistic_sees_rows_of_one_seed():
    seen = []
    data = {"a": {"x": [1, 2], "y": [3]}, "b": {"x": [4], "y": [5, 6]}}

    def total(rows):
        seen.append(len(rows))
        return float(sum(sum(r) for r in rows))
    boot = hierarchical_bootstrap(data, total, reps=5, seed=0)
    assert boot.mean == pytest.approx((6 + 15) / 2) and set(seen) == {2}


def test_decide_holds_fails_undecided():
    above = Interval(0.1, 0.05, 0.15)
    below = Interval(-0.1, -0.15, -0.05)
    straddle = Interval(0.0, -0.05, 0.05)
    assert decide(above, above, 0.01, 0.0, 0.05) == Status.holds
    assert decide(below, below, 0.99, 0.0, 0.05) == Status.fails
    assert decide(straddle, straddle, 0.4, 0.0, 0.05) == Status.undecided
    assert decide(below, straddle, 0.6, 0.0, 0.05) == Status.undecided   # both intervals must rule it out
    assert decide(above, above, 0.08, 0.0, 0.05) == Status.undecided     # Holm-adjusted p above alpha


@pytest.mark.parametrize("crossed", [True, False])
@pytest.mark.parametrize("metric", ["mean", "auroc_within", "first_error_f1", "aulc_f1"])
def test_the_count_path_gives_the_row_by_row_bootstrap(metric, crossed):
    """The report's fast path (per-problem counts summed with numpy) draws what the row-by-row statistic
    draws and gives its interval and p-value: a treatment-minus-control difference of each metric, on
    seeds that share their problems and on seeds that do not."""
    import random

    from bench.claims.metrics import additive_difference, metric_of
    rng = random.Random(1)

    def row():
        if metric == "mean":
            return rng.choice([0.0, 0.25, 1.0])
        if metric == "auroc_within":
            return [[rng.randint(0, 1), rng.random()] for _ in range(rng.randint(1, 5))]
        pairs = lambda: [[rng.choice([-1, 0, 1]), rng.choice([-1, 0, 1])] for _ in range(rng.randint(1, 4))]
        return pairs() if metric == "first_error_f1" else {"0.1": pairs(), "0.3": pairs(), "0.5": pairs()}

    data = {f"s{u}": {f"p{p}": (row(), row()) for p in range(12 if crossed else 9 + u)} for u in range(4)}
    f = metric_of(metric)

    def difference(pairs):
        return f([x for x, _ in pairs]) - f([y for _, y in pairs])
    fast = additive_difference(metric, [pair for u in data.values() for pair in u.values()])
    assert fast is not None
    slow = hierarchical_bootstrap(data, difference, reps=300, seed=3)
    quick = hierarchical_bootstrap(data, difference, reps=300, seed=3, additive=fast)
    for a, b in zip((slow.mean, slow.low, slow.high, slow.p_value), (quick.mean, quick.low, quick.high, quick.p_value)):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)
