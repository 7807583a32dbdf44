"""Label efficiency of active selection (DESIGN.md §7): active vs random vs full at equal label budgets.

Frozen SmolLM2-135M backbone: separator features of the pool and of the ProcessBench items are
computed ONCE (stage `features`, cached in <out>/features.safetensors) and every run trains only the
K = 32 heads on them through the same prm.train.train() the CLI uses (oracle judge, ledger, DeepSpeed).

    python bench/bench_label_efficiency.py --stage features --pool 800 --eval-limit 120
    python bench/bench_label_efficiency.py --stage runs --seeds 0 1 2
Writes <out>/runs.jsonl (one line per run), results.json, label_efficiency.png and a markdown table.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from prm.config import EvalConfig, PRMConfig, PRMTrainConfig, DataConfig, TrainerConfig
from prm.data import Trajectory, load_prm800k
from prm.eval import load_processbench_sample
from prm.features import FeatureCache
from prm.model import EnsembleHeads, EnsemblePRM

BUDGETS = (0.1, 0.2, 0.3, 0.5, 1.0)


def prm_config(args) -> PRMConfig:
    return PRMConfig(backbone=args.backbone, dtype="fp32", num_heads=32, train_mode="frozen", max_length=args.max_tokens,
                     batch_size=args.batch_size, head_lr=args.head_lr, pos_weight=args.pos_weight)


def stage_features(args, out: Path) -> None:
    prm = EnsemblePRM(prm_config(args))
    pool = load_prm800k("train")
    random.Random(0).shuffle(pool)
    kept = []
    for t in pool:
        if len(prm.encode(t.question, t.steps)[0]) <= args.max_tokens:
            kept.append(t)
        if len(kept) >= args.pool:
            break
    with (out / "pool.jsonl").open("w") as fh:
        for t in kept:
            fh.write(json.dumps(t.to_json()) + "\n")
    cache_path = out / "features.safetensors"
    cache = FeatureCache.load(cache_path) if cache_path.is_file() else FeatureCache(args.max_tokens)
    start = time.perf_counter()
    cache.compute(prm, [t.question for t in kept], [t.steps for t in kept], 8, progress=True)
    cache.save(out / "features.safetensors")
    pool_s = time.perf_counter() - start
    for subset in args.subsets:
        items = load_processbench_sample(subset, args.eval_limit)
        cache.compute(prm, [t.question for t in items], [t.steps for t in items], 8, progress=True, max_length=None)
        cache.save(out / "features.safetensors")
    info = {"pool": len(kept), "pool_bad_fraction": sum(t.first_error != -1 for t in kept) / len(kept),
            "pool_feature_seconds": pool_s, "total_feature_seconds": time.perf_counter() - start,
            "subsets": args.subsets, "eval_limit": args.eval_limit}
    (out / "features.json").write_text(json.dumps(info, indent=2))
    print(info)


def stage_runs(args, out: Path) -> None:
    from prm.train import train
    pool = [Trajectory(**{k: v for k, v in json.loads(line).items()})
            for line in (out / "pool.jsonl").read_text().splitlines()]
    for t in pool:
        t.first_error = t.first_error if t.first_error is not None else -1  # to_json drops nothing but None
    prm = EnsemblePRM(prm_config(args))
    done = set()
    runs_path = out / "runs.jsonl"
    if runs_path.is_file():
        done = {(r["mode"], r["budget"], r["seed"]) for r in map(json.loads, runs_path.read_text().splitlines())}
    plan = [("full", 1.0, s) for s in args.seeds] + [(m, b, s) for b in args.budgets if b < 1 for s in args.seeds
                                                     for m in ("active", "random")]
    for mode, budget, seed in plan:
        if (mode, budget, seed) in done:
            continue
        prm.heads = EnsembleHeads(32, prm.hidden_size, 128, seed=seed)   # fresh heads, same frozen backbone
        run_dir = out / "runs" / f"{mode}_{budget}_{seed}"
        cfg = PRMTrainConfig(prm=prm_config(args), data=DataConfig(), judge="oracle", mode=mode, budget=budget,
                             epochs=args.epochs, feature_cache=str(out / "features.safetensors"),
                             trainer=TrainerConfig(out_dir=str(run_dir), seed=seed, resume="never", save_every=10 ** 9,
                                                   progress=False),
                             eval=EvalConfig(subsets=list(args.subsets), limit=args.eval_limit, tune_on=args.tune_on))
        cfg.prm.seed = seed
        start = time.perf_counter()
        summary = train(cfg, prm=prm, pool=pool)
        pb = summary["eval"]["processbench"]
        row = {"mode": mode, "budget": budget, "seed": seed, "labels": summary["labels_used"], "pool": len(pool),
               "f1": pb["mean_f1_held_out"] if args.tune_on else pb["mean_f1"], "threshold": pb["threshold"],
               "subsets": {k: v["f1"] for k, v in pb["subsets"].items()}, "seconds": time.perf_counter() - start}
        with runs_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(row, flush=True)
    report(out)


def report(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    def stats(mode, budget):
        f = [r["f1"] for r in rows if r["mode"] == mode and r["budget"] == budget]
        lab = [r["labels"] for r in rows if r["mode"] == mode and r["budget"] == budget]
        return (statistics.mean(f), statistics.pstdev(f), statistics.mean(lab), len(f)) if f else None
    full = stats("full", 1.0)
    budgets = sorted({r["budget"] for r in rows if r["mode"] != "full"})
    lines = ["| budget | active F1 | labels | random F1 | labels | active - random |", "|---|---|---|---|---|---|"]
    table, reach = {}, None
    for b in budgets:
        a, r = stats("active", b), stats("random", b)
        if not a or not r:
            continue
        diffs = [x["f1"] - y["f1"] for x in rows if x["mode"] == "active" and x["budget"] == b
                 for y in rows if y["mode"] == "random" and y["budget"] == b and y["seed"] == x["seed"]]
        table[b] = {"active": a, "random": r, "diff": (statistics.mean(diffs), statistics.pstdev(diffs))}
        lines.append(f"| {b:.0%} | {a[0]:.3f} ± {a[1]:.3f} | {a[2]:.0f} | {r[0]:.3f} ± {r[1]:.3f} | {r[2]:.0f} | "
                     f"{table[b]['diff'][0]:+.3f} ± {table[b]['diff'][1]:.3f} |")
        if reach is None and full and a[0] >= full[0]:
            reach = b
    lines.append(f"| 100% (full) | {full[0]:.3f} ± {full[1]:.3f} | {full[2]:.0f} | | | |")
    lines.append(f"\nSmallest budget where active reaches full-data F1 (mean over seeds): "
                 f"{'none tested' if reach is None else f'{reach:.0%}'}")
    md = "\n".join(lines)
    (out / "table.md").write_text(md + "\n")
    (out / "results.json").write_text(json.dumps({"full": full, "budgets": table, "active_reaches_full_at": reach},
                                                 indent=2))
    print(md)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, color in (("active", "tab:blue"), ("random", "tab:orange")):
        xs = [b for b in budgets if b in table]
        ys = [table[b][mode][0] for b in xs]
        es = [table[b][mode][1] for b in xs]
        ax.errorbar([x * 100 for x in xs], ys, yerr=es, marker="o", capsize=3, label=mode, color=color)
    if full:
        ax.axhline(full[0], color="gray", linestyle="--", label=f"full data ({full[0]:.3f})")
    ax.set_xlabel("label budget (% of pool)")
    ax.set_ylabel("ProcessBench F1 (mean of subsets)")
    ax.set_title("ActPRM selection vs random, frozen SmolLM2-135M, K=32")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("label_efficiency.png"), dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["features", "runs", "report"], required=True)
    ap.add_argument("--out", default="outputs/bench_prm")
    ap.add_argument("--backbone", default="smollm2-135m-instruct")
    ap.add_argument("--pool", type=int, default=800)
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--subsets", nargs="+", default=["gsm8k", "math"])
    ap.add_argument("--eval-limit", type=int, default=120)
    ap.add_argument("--tune-on", default=None)
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--pos-weight", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest on the shared 2-core machine")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    {"features": stage_features, "runs": stage_runs, "report": lambda a, o: report(o)}[args.stage](args, out)


if __name__ == "__main__":
    sys.exit(main())
