"""The chain testbed: which step scorer sees which error, on bench_chain_pool's held-out samples. Grouped bars (mean and
95 % CI over seeds) of step AUROC overall, on misconception errors, on slips, and for a right against a wrong
x 7 / x 8 product, for the policy's confidence and the full-pool PRMs of the runs tagged --tag.

    python -m bench.chain_scorer_kinds --out outputs/bench_chain_pool_v3 --tag _p78 --plot bench/chain_scorer_kinds.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.chain_stats import mean_ci

METRICS = {"auroc": "all steps", "auroc_misconception": "misconception errors\nvs correct steps",
           "auroc_slip": "slips vs\ncorrect steps", "auroc_product78": "right vs wrong\nx 7 / x 8 product"}
PRMS = {"_hidden_logprob": "PRM: frozen backbone,\nhidden + log-probs", "_full": "PRM: trained backbone,\nhidden",
        "_hidden_logprob_full": "PRM: trained backbone,\nhidden + log-probs",
        "_hidden_policy_logprob_full": "PRM: trained backbone,\nhidden + frozen policy's log-probs"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_chain_pool_v3"))
    ap.add_argument("--tag", default="_p78")
    ap.add_argument("--plot", default="bench/chain_scorer_kinds.png")
    args = ap.parse_args()
    base = json.loads((args.out / f"baselines{args.tag}.json").read_text())
    bars = {"policy confidence\n(min token, free)": {m: (base["confidence_min"][m], 0.0) for m in METRICS}}
    for suffix, name in PRMS.items():
        path = args.out / f"runs{suffix}{args.tag}.jsonl"
        if not path.is_file():
            print(f"[chain_scorer_kinds] no {path}: {name.replace(chr(10), ' ')} left out")
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows = [r for r in rows if r["mode"] == "full"]
        bars[f"{name} ({len(rows)} seeds)"] = {m: mean_ci([r[m] for r in rows]) for m in METRICS}
    for name, v in bars.items():
        print(name.replace("\n", " "), {m: f"{a:.3f} ± {h:.3f}" for m, (a, h) in v.items()})
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(bars)
    for k, (name, v) in enumerate(bars.items()):
        xs = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(METRICS))]
        ax.bar(xs, [v[m][0] for m in METRICS], width, yerr=[v[m][1] for m in METRICS], capsize=3, label=name)
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    ax.set_xticks(range(len(METRICS)), list(METRICS.values()))
    ax.set_ylabel("step AUROC")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("chain testbed: which scorer sees which error (held-out samples; PRMs on all 1,300 pool labels)")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
