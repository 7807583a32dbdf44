"""Reward-guided search on the CPU testbed (bench/RESULTS.md), from the records that
`bench/bench_search.py --only chain_prm_min` (every method) and `--only chain_confidence` / `--only chain`
(`--methods beam,dvts`) wrote, with best-of-N of the latter two re-scored on chain_prm_min's samples by
`bench/rescore_bon.py` (same samples, so the scorers compare paired); best-of-N under the PRM's last step
is chosen here from chain_prm_min's records (the same PRM scores, another aggregate: no pass needed).

Per scorer (the PRM with its last / its lowest step score, the policy's own min token probability), method
(best-of-N, beam, DVTS), selector (majority, vanilla, weighted) and n: accuracy over the problems per seed,
mean with a 95 % t-interval over seeds, compute per problem (generated tokens, PRM passes, the policy's
scoring passes), and paired per-seed differences at matched n; a plot against generated tokens.

    python -m bench.chain_search [--root outputs/bench_search] [--out bench/chain_search]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import fmean

from bench.chain_stats import fmt, mean_ci, paired
from core.answers import AnswerChecker
from rl.search_rescore import reselected

SCORERS = {"chain_prm_min": "PRM (min step)", "chain": "PRM (last step)", "chain_confidence": "confidence (min token)"}
BASE = "chain_prm_min"      # greedy and best-of-N majority (no scorer) come from its records
COST = ("generated_tokens", "passes")
# best-of-N of the base records chosen again under the PRM's last step (rl.search_rescore.reselected)
RESELECT = (["vanilla", "weighted"], [0.0])


def oracle_rows(rec: dict, checker) -> list[dict]:
    """best-of-N pass@n': some sample among the first n' carries the reference answer (no selector can do
    better on these samples): the ceiling of every best-of-N row."""
    ok = checker.check_many([rec["reference"]] * len(rec["solutions"]), [s["answer"] for s in rec["solutions"]])
    return [{"label": "best_of_n/oracle (pass@n)", "n": r["n"], "correct": any(ok[:r["n"]]), "cost": r["cost"]}
            for r in rec["results"] if r["label"] == "best_of_n/majority"]


def load(root: Path, checker) -> dict:
    """{(scorer, label, n): {seed: {"acc": .., cost fields: ..}}} over every record file of each setting."""
    cells: dict = defaultdict(lambda: defaultdict(list))
    for setting in SCORERS:
        for path in sorted((root / setting / "records").glob("*.jsonl")):
            for line in path.open():
                rec = json.loads(line)
                if setting == BASE and rec["method"] == "best_of_n":
                    rec["results"] = rec["results"] + oracle_rows(rec, checker)
                    for r in reselected(rec, checker, "last", *RESELECT):   # the PRM's last step: same samples, same scores
                        cells[("chain", r["label"], r["n"])][rec["seed"]].append(
                            {"correct": r["correct"], "generated_tokens": r["cost"]["generated_tokens"],
                             "passes": r["cost"]["prm_passes"]})
                    if "--check" in sys.argv:   # re-selection under the records' own aggregate reproduces them
                        mine = {(r["label"], r["n"]): r["correct"] for r in reselected(rec, checker, rec["aggregate"], *RESELECT)}
                        assert all(mine[(r["label"], r["n"])] == r["correct"] for r in rec["results"]
                                   if (r["label"], r["n"]) in mine), rec["question"]
                for r in rec["results"]:
                    cells[(setting, r["label"], r["n"])][rec["seed"]].append(
                        {"correct": bool(r["correct"]), "generated_tokens": r["cost"]["generated_tokens"],
                         # a scorer pass: through the PRM, or the policy re-reading a sequence (confidence)
                         "passes": r["cost"].get("prm_passes", 0) + r["cost"].get("policy_passes", 0)})
    return {key: {seed: {"acc": fmean(x["correct"] for x in xs), "problems": len(xs),
                         **{k: fmean(x[k] for x in xs) for k in COST}} for seed, xs in by_seed.items()}
            for key, by_seed in cells.items()}


def acc(cells, setting, label, n) -> dict[int, float]:
    return {s: v["acc"] for s, v in cells.get((setting, label, n), {}).items()}


def rows_of(cells) -> list[tuple[str, str]]:
    """(setting, label) rows: greedy and best-of-N majority once (they need no scorer), then per scorer."""
    rows = [(BASE, "greedy"), (BASE, "best_of_n/oracle (pass@n)"), (BASE, "best_of_n/majority")]
    for setting in SCORERS:
        for label in ("best_of_n/vanilla", "best_of_n/weighted", "beam/majority", "beam/vanilla", "beam/weighted",
                      "dvts/majority", "dvts/vanilla", "dvts/weighted"):
            if any(k[0] == setting and k[1] == label for k in cells):
                rows.append((setting, label))
    return rows


def accuracy_table(cells, ns) -> list[str]:
    lines = ["| scorer | method / selector | " + " | ".join(f"n={n}" for n in ns) + " |",
             "|---|---|" + "---:|" * len(ns)]
    full = max(len(by) for by in cells.values())
    for setting, label in rows_of(cells):
        who = "-" if setting == BASE and label in ("greedy", "best_of_n/majority", "best_of_n/oracle (pass@n)") \
            else SCORERS[setting]
        vals = []
        for n in ns:
            seeds = acc(cells, setting, label, n)
            note = f" [{len(seeds)} seeds]" if len(seeds) < full else ""   # a run still short of every seed
            vals.append(fmt(list(seeds.values()), 3) + note if seeds else "")
        lines.append(f"| {who} | {label} | " + " | ".join(vals) + " |")
    return lines


def compute_table(cells, ns) -> list[str]:
    lines = ["| scorer | method | " + " | ".join(f"n={n}" for n in ns) + " |", "|---|---|" + "---:|" * len(ns)]
    for setting in SCORERS:
        for method in ("best_of_n", "beam", "dvts"):
            label = f"{method}/weighted"
            out = []
            for n in ns:
                seeds = cells.get((setting, label, n))
                out.append(f"{fmean(v['generated_tokens'] for v in seeds.values()):.0f} / "
                           f"{fmean(v['passes'] for v in seeds.values()):.1f}" if seeds else "")
            if any(out):
                lines.append(f"| {SCORERS[setting]} | {method} | " + " | ".join(out) + " |")
    return lines


def paired_table(cells, ns) -> list[str]:
    lines = ["| comparison (paired over seeds) | " + " | ".join(f"n={n}" for n in ns) + " |",
             "|---|" + "---:|" * len(ns)]
    pairs = []
    for method in ("best_of_n", "beam", "dvts"):
        for sel in ("weighted", "vanilla"):
            for prm in ("chain_prm_min", "chain"):
                pairs.append((f"{SCORERS[prm]} - confidence, {method}/{sel}", (prm, f"{method}/{sel}"),
                              ("chain_confidence", f"{method}/{sel}")))
        for scorer in SCORERS:
            pairs.append((f"{SCORERS[scorer]} {method}/weighted - best-of-N majority",
                          (scorer, f"{method}/weighted"), (BASE, "best_of_n/majority")))
    for scorer in SCORERS:
        for method in ("best_of_n", "beam", "dvts"):
            pairs.append((f"{SCORERS[scorer]} {method}/weighted - greedy", (scorer, f"{method}/weighted"),
                          (BASE, "greedy")))
    for name, a, b in pairs:
        vals = []
        for n in ns:
            d = paired(acc(cells, *a, n), acc(cells, *b, 1 if b[1] == "greedy" else n))
            vals.append(f"{fmt(d, 3)} ({sum(x > 0 for x in d)}/{len(d)})" if d else "")
        if any(vals):
            lines.append(f"| {name} | " + " | ".join(vals) + " |")
    return lines


def plot(cells, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), sharey=True)
    colors = {"chain": "tab:blue", "chain_prm_min": "tab:green", "chain_confidence": "tab:red"}
    greedy = mean_ci(list(acc(cells, BASE, "greedy", 1).values()))[0]
    for ax, method in zip(axes, ("best_of_n", "beam", "dvts")):
        ax.axhline(100 * greedy, color="black", ls=":", lw=1, label="greedy")
        series = [(BASE, "best_of_n/majority", "gray", "--", "best-of-N majority (no scorer)")]
        for setting in SCORERS:
            series += [(setting, f"{method}/weighted", colors[setting], "-", f"{SCORERS[setting]} weighted"),
                       (setting, f"{method}/vanilla", colors[setting], ":", f"{SCORERS[setting]} vanilla")]
            if method != "best_of_n":
                series.append((setting, f"{method}/majority", colors[setting], "-.", f"{SCORERS[setting]} majority"))
        for setting, label, color, ls, name in series:
            ns = sorted(n for (s, lab, n) in cells if s == setting and lab == label and n >= 4)
            if not ns:
                continue
            x = [fmean(v["generated_tokens"] for v in cells[(setting, label, n)].values()) for n in ns]
            m = [mean_ci(list(acc(cells, setting, label, n).values())) for n in ns]
            ax.errorbar(x, [100 * a for a, _ in m], yerr=[100 * h for _, h in m], color=color, ls=ls, marker="o",
                        ms=3, capsize=2, label=name)
        ax.set_xscale("log")
        ticks = [240, 480, 960, 1920, 3840]   # n = 4 ... 64 samples of ~60 tokens
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(0, 100)
        ax.set_xlabel("generated tokens per problem (n = 4 ... 64)")
        ax.set_title(method)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy % (mean, 95 % CI over seeds)")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("chain testbed: search with chain-tiny (T = 1), PRM vs the policy's own confidence vs majority")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("outputs/bench_search"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "chain_search")
    ap.add_argument("--check", action="store_true", help="assert the re-selection reproduces the records")
    args = ap.parse_args()
    checker = AnswerChecker()
    try:
        cells = load(args.root, checker)
    finally:
        checker.close()
    ns = sorted({k[2] for k in cells})
    problems = max(v["problems"] for by in cells.values() for v in by.values())
    full = max(len(by) for by in cells.values())
    text = "\n".join([f"Accuracy (mean ± 95 % CI over {full} seeds unless a cell says fewer; {problems} problems "
                       "per seed):", "",
                      *accuracy_table(cells, ns), "",
                      "Compute per problem, weighted selector: generated tokens / scorer passes (PRM passes; the "
                      "policy's passes re-reading its samples for the confidence scorer; both backbones are "
                      "chain-tiny, so a pass costs the same):", "", *compute_table(cells, ns), "",
                      "Paired differences in accuracy at matched n (mean ± 95 % CI over seeds; seeds with a positive "
                      "difference / seeds):", "", *paired_table(cells, ns), ""])
    args.out.with_suffix(".md").write_text(text)
    plot(cells, args.out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
