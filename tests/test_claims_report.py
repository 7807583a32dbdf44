"""bench/claims/report.py: a claim's table re-made from raw rows, decided by its own rule, Holm across its table."""
import json
import random

import pytest

from bench.claims import report as report_mod
from bench.claims.metrics import metric_of
from bench.claims.spec import Metric, load_claim
from bench.claims.stats import Status, holm

CLAIM = """# synthetic

```yaml
id: {id}
title: "synthetic {id}"
hypothesis: "h"
metric: mean
arms:
  good: "better"
  base: "baseline"
  bad: "worse"
  same: "the baseline again"
comparisons:
  - name: good_vs_base
    treatment: good
    control: base
  - name: bad_vs_base
    treatment: bad
    control: base
  - name: same_vs_base
    treatment: same
    control: base
    primary: false
seeds: [0, 1, 2, 3]
builds: [0]
problem_sets:
  - name: test
    role: test
    generator_seeds: [950000, 950001]
    per_seed: 40
table: synthetic
bootstrap_reps: 2000
run: "python -m bench.claims.run {id}"
raw: {raw}
plot: {plot}
```
"""


def make_claim(tmp_path, cid: str, rows: list[dict] | None):
    raw, plot = tmp_path / f"{cid}.jsonl", tmp_path / f"{cid}.png"
    path = tmp_path / f"{cid}.md"
    path.write_text(CLAIM.format(id=cid, raw=raw, plot=plot))
    if rows is not None:
        raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def synthetic_rows() -> list[dict]:
    """base passes 40 %, good 90 %, bad 5 %, same: base's rate drawn again (no effect)."""
    rng, rows = random.Random(0), []
    for unit in range(4):
        for p in range(40):
            for arm, rate in (("base", .4), ("good", .9), ("bad", .05), ("same", .4)):
                rows.append({"unit": f"s{unit}", "arm": arm, "problem": f"p{p}", "value": int(rng.random() < rate)})
    return rows


@pytest.fixture
def claims(tmp_path, monkeypatch):
    paths = [make_claim(tmp_path, "x", synthetic_rows()), make_claim(tmp_path, "y", None)]
    monkeypatch.setattr(report_mod, "claim_files", lambda: paths)
    return paths


def test_statuses_follow_the_rule(claims):
    results = {r.comparison.name: r for r in report_mod.table_results("synthetic")["x"]}
    assert results["good_vs_base"].status == Status.holds
    assert results["bad_vs_base"].status == Status.fails
    assert results["same_vs_base"].status == Status.undecided
    assert report_mod.claim_status(load_claim(claims[0]), list(results.values())) == Status.fails
    assert report_mod.claim_status(load_claim(claims[1]), []) == Status.not_run


def test_holm_counts_the_comparisons_not_yet_run(claims):
    results = report_mod.table_results("synthetic")["x"]
    family = [r.p_value for r in results] + [1.0] * 3      # claim y pre-registers 3 comparisons, not run
    assert [r.adjusted for r in results] == pytest.approx(holm(family)[:3])


def test_estimate_is_the_paired_mean_difference(claims):
    rows = synthetic_rows()
    units = sorted({r["unit"] for r in rows})

    def rate(unit, arm):
        vals = [r["value"] for r in rows if r["unit"] == unit and r["arm"] == arm]
        return sum(vals) / len(vals)
    expected = sum(rate(u, "good") - rate(u, "base") for u in units) / len(units)
    good = next(r for r in report_mod.table_results("synthetic")["x"] if r.comparison.name == "good_vs_base")
    assert good.t.mean == pytest.approx(expected) and good.boot.mean == pytest.approx(expected)
    assert good.boot.low < expected < good.boot.high and (good.units, good.problems) == (4, 40)


def test_report_writes_table_and_plot_and_the_claims_table(claims, monkeypatch):
    monkeypatch.setattr(report_mod, "claim_path", lambda name: claims[0])
    text = report_mod.report("x")
    assert "| good_vs_base | mean | +0.00 |" in text and "holds" in text and "**fails**" in text
    assert (claims[0].parent / "x.png").is_file() and (claims[0].parent / "x.table.md").read_text() == text
    table = report_mod.claims_table(["synthetic"])
    assert "pre-registered, not yet run" in table and "good_vs_base: +" in table


def test_a_malformed_raw_line_names_file_line_and_field(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"unit": "a", "arm": "b", "problem": "c", "value": 1}\n{"unit": "a", "arm": "b", "value": 1}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: problem: missing"):
        report_mod.read_raw(path)


def test_compute_is_shown_per_arm_beside_the_metric_when_rows_carry_it(claims, tmp_path, monkeypatch):
    rows = synthetic_rows()
    for r in rows:   # good and base carry compute (base: a row without it shows "-"); bad and same do not
        if r["arm"] in ("good", "base"):
            r["compute"] = {"policy_forward_tokens": 100 if r["arm"] == "good" else 10, "scorer_forward_tokens": 7}
    next(r for r in rows if r["arm"] == "base")["compute"].pop("scorer_forward_tokens")
    path = make_claim(tmp_path, "z", rows)
    read = report_mod.read_raw(tmp_path / "z.jsonl")
    assert read == rows                                     # rows with and without compute are accepted
    table = report_mod.compute_table(load_claim(path), read)
    good = sum(r["value"] for r in rows if r["arm"] == "good") / 160
    assert f"| good | {good:.3f} | 160 | 100 | 7 |" in table and "| base |" in table and "| 10 | - |" in table
    assert "| bad |" not in table and "policy forward tokens / problem" in table
    assert report_mod.compute_table(load_claim(claims[0]), synthetic_rows()) == ""   # no compute: no table
    monkeypatch.setattr(report_mod, "claim_files", lambda: [path])
    monkeypatch.setattr(report_mod, "claim_path", lambda name: path)
    assert table in report_mod.report("z")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"unit": "a", "arm": "b", "problem": "c", "value": 1, "compute": {"policy_forward_tokens": "x"}}\n')
    with pytest.raises(ValueError, match=rf"{bad}:1: compute:"):
        report_mod.read_raw(bad)


def test_every_arm_and_its_set_level_figures_are_shown(claims, tmp_path, monkeypatch):
    """Beside the comparisons: each arm's own mean over units (t over units), and the runner's per-unit
    figures that are not per-problem (mean over units; a figure an arm lacks shows "-")."""
    monkeypatch.setattr(report_mod, "claim_path", lambda name: claims[0])
    rows = synthetic_rows()
    claim = load_claim(claims[0])
    good = [sum(r["value"] for r in rows if r["arm"] == "good" and r["unit"] == f"s{u}") / 40 for u in range(4)]
    assert f"| good | mean | {sum(good) / 4:.3f} |" in report_mod.arm_table(claim, rows)
    units = [{"unit": f"s{u}", "arm": "good", "auroc": 0.5 + u / 10, "labels": 8} for u in range(4)]
    units.append({"unit": "s0", "arm": "base", "labels": 4})
    (tmp_path / "x.units.jsonl").write_text("".join(json.dumps(r) + "\n" for r in units))
    text = report_mod.report("x")
    assert "| good | 0.650 | 8 | 4 |" in text and "| base | - | 4 | 1 |" in text and "x.units.jsonl" in text


def test_metrics_by_hand():
    assert metric_of(Metric.mean)([1, 0, 1, 1]) == 0.75
    # problem 1: right steps 0.9, 0.4 vs wrong 0.5 -> 1 of 2 pairs; problem 2: 0.8 vs 0.8 -> a tie, 1/2
    assert metric_of(Metric.auroc_within)([[[1, .9], [1, .4], [0, .5]], [[1, .8], [0, .8]]]) == pytest.approx(1.5 / 3)
    # F1 rows: errors named 1 of 2 (acc_error .5), all-correct named 1 of 1 (acc_correct 1) -> 2/3
    assert metric_of(Metric.first_error_f1)([[[2, 2], [1, 0]], [[-1, -1]]]) == pytest.approx(2 / 3)
    # F1 2/3 at budget 0.1 (as above), 1.0 at 0.3: the trapezoid's mean height over the span
    rows = [{"0.1": [[2, 2], [1, 0], [-1, -1]], "0.3": [[2, 2], [-1, -1]]}]
    assert metric_of(Metric.aulc_f1)(rows) == pytest.approx((2 / 3 + 1.0) / 2)


def test_first_error_f1_from_counts_is_processbench_f1_of_the_pairs():
    """The bootstrap sums per-problem hit counts: the same F1 as judges.metrics.processbench_f1 of every pair,
    its NaN (no erroneous or no all-correct item) and its 0.0 (nothing named right) included."""
    import math
    import random

    from bench.claims.metrics import f1_counts
    from judges.metrics import processbench_f1
    rng = random.Random(0)
    f1 = metric_of(Metric.first_error_f1)
    for _ in range(200):
        rows = [[[rng.choice([-1, 0, 1, 2]), rng.choice([-1, 0, 1, 2])] for _ in range(rng.randint(1, 6))]
                for _ in range(rng.randint(1, 5))]
        pairs = [pair for r in rows for pair in r]
        want = processbench_f1([p for _, p in pairs], [y for y, _ in pairs])["f1"]
        got = f1(rows)
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12)
        assert f1([f1_counts(r) for r in rows]) == got or (math.isnan(got) and math.isnan(f1([f1_counts(r) for r in rows])))
    assert f1([[[1, 0], [-1, 2]]]) == 0.0
    assert math.isnan(f1([[[1, 1], [2, 2]]]))


def test_auroc_within_remembers_a_row_only_while_it_is_the_same_row():
    """The bootstrap's speed-up: a problem's pair counts are kept by the row's identity. Fresh rows whose
    predecessors are gone (so CPython would hand their ids out again) are counted afresh every time."""
    for i in range(200):
        problem = [[1, 0.5], [0, 0.9 if i % 2 else 0.1]]
        assert metric_of(Metric.auroc_within)([problem, problem]) == (0.0 if i % 2 else 1.0)
        del problem

def test_results_page_opens_with_the_current_claims_table():
    """bench/RESULTS.md's claims table is the one the claim files and raw results make (it cannot drift)."""
    from bench.claims.spec import ROOT
    page = (ROOT / "bench" / "RESULTS.md").read_text()
    table = report_mod.claims_table()
    assert table.strip() in page
    sections = [line for line in page.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Claims"   # the claims table comes before every measured section


def test_a_claim_with_units_missing_is_incomplete_and_leaves_holm_alone(tmp_path, monkeypatch):
    """Three of four pre-registered seeds ran: the intervals are shown, nothing is decided, and the family
    counts the comparisons at p = 1 (as not run), so a partial run cannot change another claim's correction."""
    rows = [r for r in synthetic_rows() if r["unit"] != "s3"]
    paths = [make_claim(tmp_path, "x", rows), make_claim(tmp_path, "y", None)]
    monkeypatch.setattr(report_mod, "claim_files", lambda: paths)
    results = report_mod.table_results("synthetic")["x"]
    assert {r.status for r in results} == {Status.incomplete} and all(r.units == 3 for r in results)
    assert all(r.adjusted == 1.0 for r in results)
    assert report_mod.claim_status(load_claim(paths[0]), results) == Status.incomplete
    monkeypatch.setattr(report_mod, "claim_path", lambda name: paths[0])
    assert "incomplete: 3 of 4 units" in report_mod.report("x")
    assert "(3 of 4 units)" in report_mod.claims_table(["synthetic"])


def test_expected_units_are_builds_or_pools_times_seeds():
    from bench.claims.spec import claim_path
    by_id = {c.id: c for c in map(load_claim, (claim_path(n) for n in ("a_label_efficiency", "d_search")))}
    assert by_id["a"].expected_units == 3 * 20 and by_id["d"].expected_units == 3 * 3


def test_holds_when_any_needs_one_primary_comparison_and_fails_only_when_all_fail(tmp_path):
    """x's primaries: good_vs_base holds, bad_vs_base fails. Under `all` the claim fails; under `any` it holds;
    with only failing primaries it fails either way."""
    from bench.claims.spec import Quantifier
    path = make_claim(tmp_path, "x", None)
    path.write_text(path.read_text().replace("table: synthetic\n", "table: synthetic\nholds_when: any\n"))
    claim = load_claim(path)
    assert claim.holds_when == Quantifier.any and "any of: " in report_mod.rule(claim)

    def result(status):
        r = report_mod.Result(claim, claim.comparisons[0], None, None, 4, 40, 0.5)
        r.status = status
        return r
    both = [result(Status.holds), result(Status.fails)]
    assert report_mod.claim_status(claim, both) == Status.holds
    assert report_mod.claim_status(claim, [result(Status.fails), result(Status.fails)]) == Status.fails
    assert report_mod.claim_status(claim, [result(Status.undecided), result(Status.fails)]) == Status.undecided
    claim.holds_when = Quantifier.all
    assert report_mod.claim_status(claim, both) == Status.fails


def test_an_unknown_quantifier_names_its_line(tmp_path):
    from bench.claims.spec import ClaimError
    path = make_claim(tmp_path, "x", None)
    path.write_text(path.read_text().replace("table: synthetic\n", "table: synthetic\nholds_when: most\n"))
    with pytest.raises(ClaimError, match=r"x\.md:\d+: holds_when: 'most'"):
        load_claim(path)
