"""A claim's table and plot, re-made from its committed raw results alone (bench/claims/README.md).

    python -m bench.claims.report d_search      # the claim's table (stdout and <raw stem>.table.md) and plot
    python -m bench.claims.report --all         # the claims table that opens bench/RESULTS.md

For every comparison: the estimate (mean over seed-level units of the metric's treatment - control), the
paired t-interval over units, the hierarchical bootstrap interval (units, then problems), the larger of the
two one-sided p-values Holm-adjusted across the table, and the decision. Holm's family is every comparison
that the table's claim files pre-register, run or not (one not yet run counts with p = 1), so a claim run
later cannot shrink the correction of one run earlier.

Raw rows may carry a "compute" object (claim (d): the forward token positions each backbone ran for that
problem, docs/search.md); the claim's report then adds each arm's metric beside its mean compute.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench.claims.metrics import additive_difference, metric_of
from bench.claims.spec import (
    ROOT,
    Claim,
    Comparison,
    Quantifier,
    claim_files,
    claim_path,
    load_claim,
)
from bench.claims.stats import (
    Interval,
    Status,
    decide,
    hierarchical_bootstrap,
    holm,
    paired_t,
)


@dataclass
class Result:
    claim: Claim
    comparison: Comparison
    t: Interval
    boot: Interval
    units: int
    problems: int
    p_value: float                 # max of the two one-sided p-values, before Holm
    adjusted: float = math.nan
    status: Status = Status.not_run


def read_raw(path: Path) -> list[dict]:
    """The raw rows; a malformed line fails naming the file, its 1-based line and the field."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON: {e}") from None
        for key in ("unit", "arm", "problem", "value"):
            if key not in row:
                raise ValueError(f"{path}:{number}: {key}: missing (a raw row has unit, arm, problem, value)")
        compute = row.get("compute", {})
        if not isinstance(compute, dict) or not all(isinstance(v, (int, float)) for v in compute.values()):
            raise ValueError(f"{path}:{number}: compute: an object of numbers if present, got {compute!r}")
        rows.append(row)
    return rows


def compute_table(claim: Claim, rows: list[dict]) -> str:
    """Per arm whose rows carry compute: the claim's metric over its rows and each compute field's mean per
    problem (over units and problems); "" when no row carries compute."""
    arms: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if "compute" in r and r.get("metric", claim.metric.value) == claim.metric.value:
            arms[r["arm"]].append(r)
    if not arms:
        return ""
    keys = sorted({k for rs in arms.values() for r in rs for k in r["compute"]})
    f = metric_of(claim.metric)
    lines = ["| arm | " + claim.metric.value + " | units x problems | "
             + " | ".join(k.replace("_", " ") + " / problem" for k in keys) + " |",
             "|---|---:|---:|" + "---:|" * len(keys)]
    for arm in [a for a in claim.arms if a in arms]:
        rs = arms[arm]
        cells = [_mean_of([r["compute"].get(k) for r in rs]) for k in keys]
        lines.append(f"| {arm} | {f([r['value'] for r in rs]):.3f} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_of(values: list) -> str:
    """The mean, or "-" when a row lacks the field (a mean over part of the rows would mislead)."""
    return "-" if any(v is None for v in values) else f"{sum(values) / len(values):.0f}"


def comparison_data(claim: Claim, c: Comparison, rows: list[dict]) -> dict:
    """unit -> problem -> (treatment value, control value), over the problems both arms ran in that unit."""
    metric = (c.metric or claim.metric).value
    arms: dict = defaultdict(dict)
    for r in rows:
        if r.get("metric", claim.metric.value) == metric and r["arm"] in (c.treatment, c.control):
            arms[(r["unit"], r["arm"])][r["problem"]] = r["value"]
    data = {}
    for unit in sorted({u for u, _ in arms}):
        t, k = arms.get((unit, c.treatment), {}), arms.get((unit, c.control), {})
        both = sorted(set(t) & set(k))
        if both:
            data[unit] = {p: (t[p], k[p]) for p in both}
    return data


def compare(claim: Claim, c: Comparison, rows: list[dict]) -> Result | None:
    data = comparison_data(claim, c, rows)
    if len(data) < 2:
        return None
    f = metric_of(c.metric or claim.metric)

    def difference(pairs: list) -> float:
        return f([x for x, _ in pairs]) - f([y for _, y in pairs])
    per_unit = [difference(list(problems.values())) for problems in data.values()]
    t = paired_t(per_unit, margin=c.margin)
    fast = additive_difference(c.metric or claim.metric, [pair for u in data.values() for pair in u.values()])
    boot = hierarchical_bootstrap(data, difference, claim.bootstrap_reps, claim.bootstrap_seed, margin=c.margin,
                                  additive=fast)
    return Result(claim, c, t, boot, len(data), len({p for u in data.values() for p in u}), max(t.p_value, boot.p_value))


def raw_rows(claim: Claim) -> list[dict] | None:
    path = ROOT / claim.raw
    return read_raw(path) if path.is_file() else None


def table_results(table: str, read: dict[str, list[dict] | None] | None = None) -> dict[str, list[Result]]:
    """claim id -> its comparisons' results (Holm across every comparison the table pre-registers); `read`:
    raw rows the caller has already read, by claim id (the others are read here)."""
    claims = [c for c in map(load_claim, claim_files()) if c.table == table]
    read = read or {}
    results: dict[str, list[Result]] = {}
    family: list[float] = []
    for claim in claims:
        rows = read[claim.id] if claim.id in read else raw_rows(claim)
        results[claim.id] = []
        for c in claim.comparisons:
            r = compare(claim, c, rows) if rows else None
            # An incomplete comparison enters the family at p = 1, as one not yet run: stopping early must
            # not loosen (or tighten) the correction of the others.
            family.append(r.p_value if r and r.units >= claim.expected_units else 1.0)
            if r:
                results[claim.id].append(r)
    adjusted = iter(holm(family))
    for claim in claims:
        done = {r.comparison.name: r for r in results[claim.id]}
        for c in claim.comparisons:
            p = next(adjusted)
            if c.name in done:
                r = done[c.name]
                r.adjusted = p
                r.status = (decide(r.t, r.boot, p, c.margin, claim.alpha) if r.units >= claim.expected_units
                            else Status.incomplete)
    return results


def claim_status(claim: Claim, results: list[Result]) -> Status:
    primary = [r.status for r in results if r.comparison.primary]
    if not results or len(primary) < sum(c.primary for c in claim.comparisons):
        return Status.waiting if claim.waits_for else Status.not_run
    if Status.incomplete in primary:
        return Status.incomplete
    if claim.holds_when == Quantifier.any:     # one primary comparison suffices; it fails when all fail
        if Status.holds in primary:
            return Status.holds
        return Status.fails if all(s == Status.fails for s in primary) else Status.undecided
    if Status.fails in primary:
        return Status.fails
    return Status.holds if all(s == Status.holds for s in primary) else Status.undecided


def comparison_table(claim: Claim, results: list[Result]) -> str:
    lines = [f"### ({claim.id}) {claim.title}", "",
             (f"Metric: {claim.metric_text}. Decision: treatment - control > margin; Holm across table "
              f"`{claim.table}` at alpha {claim.alpha}. Status: **{claim_status(claim, results)}**."), "",
             ("| comparison | metric | margin | estimate | paired t 95 % (units) | bootstrap 95 % (units x problems) "
              "| Holm p | decision |"), "|---|---|---|---|---|---|---|---|"]
    done = {r.comparison.name: r for r in results}
    for c in claim.comparisons:
        name = c.name + ("" if c.primary else " (secondary)")
        metric = (c.metric or claim.metric).value
        r = done.get(c.name)
        if r is None:
            lines.append(f"| {name} | {metric} | {c.margin:+.2f} | - | - | - | - | {Status.not_run} |")
            continue
        lines.append(f"| {name} | {metric} | {c.margin:+.2f} | {r.t.mean:+.3f} | [{r.t.low:+.3f}, {r.t.high:+.3f}] "
                     f"({r.units}) | [{r.boot.low:+.3f}, {r.boot.high:+.3f}] ({r.units} x {r.problems}) | "
                     f"{r.adjusted:.3g} | {decision(claim, r)} |")
    return "\n".join(lines) + "\n"


def arm_table(claim: Claim, rows: list[dict]) -> str:
    """Every arm that ran, on each metric its comparisons use: the mean over units of the arm's own value,
    with the t-interval over units (the comparisons above are what the claim decides; this is what each arm
    reached)."""
    metrics = [claim.metric.value] + sorted({c.metric.value for c in claim.comparisons if c.metric} - {claim.metric.value})
    by: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[(r["arm"], r.get("metric", claim.metric.value))][r["unit"]].append(r["value"])
    lines = []
    for arm in claim.arms:
        for metric in metrics:
            units = by.get((arm, metric))
            if not units:
                continue
            f = metric_of(metric)
            values = [f(v) for v in units.values()]
            t = paired_t(values) if len(values) > 1 else Interval(values[0], math.nan, math.nan)
            lines.append(f"| {arm} | {metric} | {t.mean:.3f} | [{t.low:.3f}, {t.high:.3f}] | {len(values)} |")
    if not lines:
        return ""
    return "\n".join(["| arm | metric | mean over units | t 95 % | units |", "|---|---|---|---|---|", *lines]) + "\n"


def unit_path(claim: Claim) -> Path:
    """Set-level figures per (unit, arm) that are not per-problem, where the claim's runner writes them."""
    return ROOT / unit_name(claim)


def unit_name(claim: Claim) -> str:
    raw = Path(claim.raw)
    return raw.with_name(raw.stem + ".units.jsonl").as_posix()


def unit_table(claim: Claim) -> str:
    """The mean over units of each numeric figure in unit_path, per arm (shown, not decided)."""
    path = unit_path(claim)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    fields = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k not in ("unit", "arm")})
    if not rows or not fields:
        return ""
    lines = ["| arm | " + " | ".join(fields) + " | units |", "|---" * (len(fields) + 2) + "|"]
    for arm in claim.arms:
        mine = [r for r in rows if r["arm"] == arm]
        if mine:
            lines.append(f"| {arm} | " + " | ".join(_mean_cell([r[k] for r in mine if k in r]) for k in fields)
                         + f" | {len(mine)} |")
    return "\n".join(lines) + "\n"


def _mean_cell(values: list) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{mean:.0f}" if all(float(v).is_integer() for v in values) else f"{mean:.3f}"


def decision(claim: Claim, r: Result) -> str:
    if r.status == Status.incomplete:
        return f"{r.status}: {r.units} of {claim.expected_units} units"
    return str(r.status)


def plot(claim: Claim, results: list[Result], path: Path) -> Path | None:
    if not results:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 1.0 + 0.45 * len(results)))
    for y, r in enumerate(results):
        ax.plot([r.boot.low, r.boot.high], [y, y], lw=6, alpha=.35, color="tab:blue",
                label="bootstrap (units x problems)" if y == 0 else None)
        ax.plot([r.t.low, r.t.high], [y, y], lw=1.5, color="k", label="paired t (units)" if y == 0 else None)
        ax.plot([r.t.mean], [y], "o", color="k")
        ax.plot([r.comparison.margin] * 2, [y - .3, y + .3], color="tab:red")
    ax.set_yticks(range(len(results)), [r.comparison.name + (f" ({r.comparison.metric})" if r.comparison.metric else "")
                                        for r in results])
    ax.set_xlabel(f"treatment - control ({claim.metric.value}); red: the margin")
    title = textwrap.fill(f"({claim.id}) {claim.title}", 80)
    ran = min(r.units for r in results)
    if ran < claim.expected_units:
        title += f"\nincomplete: {ran} of {claim.expected_units} units"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=.3), ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))   # off the intervals
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure(results: list[Result]) -> str:
    """The primary comparisons in one cell: estimate, t-interval, bootstrap interval (and the units that ran
    when some have not)."""
    def units(r: Result) -> str:
        return f" ({r.units} of {r.claim.expected_units} units)" if r.status == Status.incomplete else ""
    return "<br>".join(f"{r.comparison.name}: {r.t.mean:+.3f}, t [{r.t.low:+.3f}, {r.t.high:+.3f}], "
                       f"boot [{r.boot.low:+.3f}, {r.boot.high:+.3f}]{units(r)}"
                       for r in results if r.comparison.primary) or "-"


def rule(claim: Claim) -> str:
    return ("any of: " if claim.holds_when == Quantifier.any else "") + "; ".join(f"{c.treatment} - {c.control} > {c.margin:+.2f}" for c in claim.comparisons if c.primary) + \
        f" (Holm, alpha {claim.alpha})"


def status_cell(claim: Claim, results: list[Result]) -> str:
    status = claim_status(claim, results)
    return f"{status} {claim.waits_for}" if status == Status.waiting else str(status)


def claims_table(tables: list[str] | None = None) -> str:
    claims = list(map(load_claim, claim_files()))
    lines = ["| claim | decision rule | status | figure (estimate, paired t 95 %, bootstrap 95 %) | command | raw data | plot |",
             "|---|---|---|---|---|---|---|"]
    by_table = {t: table_results(t) for t in sorted({c.table for c in claims} if tables is None else tables)}
    for claim in claims:
        results = by_table[claim.table][claim.id]
        raw = claim.raw if (ROOT / claim.raw).is_file() else "-"
        shown = claim.plot if (ROOT / claim.plot).is_file() else "-"
        lines.append(f"| ({claim.id}) {claim.title} ([file]({Path(os.path.relpath(claim.path, ROOT / 'bench')).as_posix()})) "
                     f"| {rule(claim)} | {status_cell(claim, results)} | {figure(results)} | `{claim.run}` | {raw} "
                     f"| {shown} |")
    return "\n".join(lines) + "\n"


def report(name: str) -> str:
    claim = load_claim(claim_path(name))
    rows = raw_rows(claim)
    results = table_results(claim.table, {claim.id: rows})[claim.id]
    text = comparison_table(claim, results)
    rows = rows or []
    arms = arm_table(claim, rows)
    if arms:
        text += "\nEvery arm that ran:\n\n" + arms
    units = unit_table(claim)
    if units:
        text += f"\nSet-level figures per unit, mean over units (`{unit_name(claim)}`):\n\n" + units
    compute = compute_table(claim, rows)
    if compute:
        text += "\nCompute per problem (forward token positions of each backbone, docs/search.md), mean over the " \
                "arm's rows:\n\n" + compute
    if results:
        raw = ROOT / claim.raw
        raw.with_name(raw.stem + ".table.md").write_text(text)
        plot(claim, results, ROOT / claim.plot)
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("claim", nargs="?", help="a claim file stem (d_search) or id (d)")
    ap.add_argument("--all", action="store_true", help="the claims table of every claim (bench/RESULTS.md)")
    args = ap.parse_args(argv)
    if args.all:
        print(claims_table())
    elif args.claim:
        print(report(args.claim))
    else:
        ap.error("name a claim or pass --all")


if __name__ == "__main__":
    main()
