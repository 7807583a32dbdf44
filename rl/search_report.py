"""Summary table and plot of `python -m rl.search` runs, rebuilt from every record file in out_dir.

Accuracy per (method label, n): the fraction of problems answered correctly, per seed; the table gives
the mean over seeds and their spread (min-max), and the compute per problem (generated tokens, PRM
forward passes, the policy's scoring passes under scorer.source=confidence_*, scored steps, and the
token positions the policy's and the scorer's backbones ran: docs/search.md, Compute) averaged over
problems and seeds, so methods compare at equal compute. Records written before the forward positions
were counted show "-" there.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from statistics import mean

COST_FIELDS = ("generated_tokens", "prm_passes", "scored_steps", "policy_passes")
FORWARD_FIELDS = ("policy_forward_tokens", "scorer_forward_tokens")   # None where a record lacks them


def load_rows(out_dir: Path) -> list[dict]:
    """One row per (record file line, result): label, n, seed, source, correct, cost fields."""
    rows = []
    for path in sorted((out_dir / "records").glob("*.jsonl")):
        with path.open() as fh:
            for line in fh:
                rec = json.loads(line)
                for r in rec["results"]:
                    rows.append({"label": r["label"], "n": r["n"], "seed": rec["seed"], "source": rec["source"],
                                 "correct": bool(r["correct"]), **{k: r["cost"].get(k, 0) for k in COST_FIELDS},
                                 **{k: r["cost"].get(k) for k in FORWARD_FIELDS}})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per (label, n): accuracy mean and spread over seeds, mean compute per problem."""
    groups: dict[tuple[str, int], dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(r["label"], r["n"])][r["seed"]].append(r)
    out = []
    for (lab, n), by_seed in groups.items():
        accs = [mean(x["correct"] for x in rs) for rs in by_seed.values()]
        every = [x for rs in by_seed.values() for x in rs]
        out.append({"label": lab, "n": n, "acc": mean(accs), "acc_min": min(accs), "acc_max": max(accs),
                    "seeds": len(accs), "problems": len(every) // len(accs),
                    **{k: mean(x[k] for x in every) for k in COST_FIELDS},
                    **{k: _mean_or_none([x[k] for x in every]) for k in FORWARD_FIELDS}})
    return sorted(out, key=lambda s: (_label_order(s["label"]), s["n"]))


def _mean_or_none(values: list) -> float | None:
    """A mean over every record, or None when some lack the field (a mean over part of them would mislead)."""
    return None if any(v is None for v in values) else mean(values)


def _label_order(lab: str) -> tuple:
    method = lab.split("/")[0]
    rank = ["greedy", "best_of_n", "beam", "dvts"]
    return (rank.index(method) if method in rank else len(rank), "mean-" in lab, lab)


def markdown(summary: list[dict], title: str) -> str:
    lines = [f"## {title}", "",
             "| method / selector | n | accuracy % (mean over seeds) | min-max % | seeds x problems "
             "| tokens / problem | PRM passes / problem | policy scoring passes / problem | scored steps / problem "
             "| policy forward tokens / problem | scorer forward tokens / problem |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        ran = " | ".join("-" if s[k] is None else f"{s[k]:.0f}" for k in FORWARD_FIELDS)
        lines.append(f"| {s['label']} | {s['n']} | {100 * s['acc']:.1f} | {100 * s['acc_min']:.0f}-"
                     f"{100 * s['acc_max']:.0f} | {s['seeds']} x {s['problems']} | {s['generated_tokens']:.0f} "
                     f"| {s['prm_passes']:.1f} | {s['policy_passes']:.1f} | {s['scored_steps']:.1f} | {ran} |")
    return "\n".join(lines) + "\n"


def wide_markdown(summary: list[dict]) -> str:
    """Accuracy % (generated tokens per problem) by n: one row per method / selector."""
    ns = sorted({s["n"] for s in summary})
    cells: dict[str, dict[int, str]] = defaultdict(dict)
    for s in summary:
        cells[s["label"]][s["n"]] = f"{100 * s['acc']:.1f} ({s['generated_tokens']:.0f})"
    lines = ["| method / selector | " + " | ".join(f"n={n}" for n in ns) + " |",
             "|---|" + "---:|" * len(ns)]
    for lab, row in cells.items():
        lines.append(f"| {lab} | " + " | ".join(row.get(n, "") for n in ns) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[str, list[dict]] = defaultdict(list)
    for s in summary:
        series[s["label"]].append(s)
    for lab, pts in series.items():
        pts.sort(key=lambda s: s["n"])
        if lab == "greedy":
            for ax in axes:
                ax.axhline(100 * pts[0]["acc"], color="black", ls="--", lw=1, label="greedy")
            continue
        style = "--" if "mean-" in lab else "-"
        for ax, x in zip(axes, ("n", "generated_tokens")):
            ax.errorbar([p[x] for p in pts], [100 * p["acc"] for p in pts], ls=style, marker="o", ms=3,
                        yerr=[[100 * (p["acc"] - p["acc_min"]) for p in pts],
                              [100 * (p["acc_max"] - p["acc"]) for p in pts]], capsize=2, label=lab)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("n (samples / beams)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("generated tokens per problem")
    for ax in axes:
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_report(out_dir: Path, plot: bool = True, title: str = "search") -> Path:
    """summary.md (and search.png) in out_dir from every record file there; returns summary.md."""
    summary = summarise(load_rows(out_dir))
    path = out_dir / "summary.md"
    path.write_text(markdown(summary, title) + "\nAccuracy % (generated tokens per problem), mean over seeds:\n\n"
                    + wide_markdown(summary))
    if plot and summary:
        plot_summary(summary, out_dir / "search.png", title)
    return path


if __name__ == "__main__":   # `python -m rl.search_report OUT_DIR [TITLE]`: rebuild the report only
    import sys

    print(write_report(Path(sys.argv[1]), title=sys.argv[2] if len(sys.argv) > 2 else sys.argv[1]).read_text())
