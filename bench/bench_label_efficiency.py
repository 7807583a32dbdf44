"""Label efficiency of active selection (docs/method.md, Eq. 5): active vs random vs full at equal label budgets.

Frozen SmolLM2-135M backbone: separator features of the pool and of the ProcessBench items are
computed ONCE (stage `features`, cached in <out>/features.safetensors); every run then builds a
heads-only PRM (EnsemblePRM.heads_only: no backbone is loaded) and trains the K = 32 heads on the cached
features through the same prm.train.train_on_pool() -> PRMLearner.update the CLI uses (stream once for selection,
epochs-1 replays of the revealed labels, oracle judge through the ledger), in seconds.
The last --tune-n pool trajectories are held out: tau and the anti-collapse hyperparameters are chosen
on them, never on ProcessBench.

    python -m bench.bench_label_efficiency --stage features --pool 800 --eval-limit 120 --subsets gsm8k
    python -m bench.bench_label_efficiency --stage sweep            # pos_weight x epochs, full data, seed 0
    python -m bench.bench_label_efficiency --stage runs --seeds 0 1 2 --pos-weight P --epochs E
    python -m bench.bench_label_efficiency --stage features --subsets math      # later: add math features
    python -m bench.bench_label_efficiency --stage rescore --subsets math --tune-on-subset math
                                   # re-score the saved heads of every run; gsm8k at the tau tuned on math
Writes <out>/runs.jsonl (one line per run), results.json, table.md and bench/label_efficiency.png.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from core.config import TrainerConfig
from prm.config import (
    PoolConfig,
    PoolSelectConfig,
    PRMConfig,
    PRMTrainConfig,
    SelectMode,
)
from prm.data import load_prm800k
from prm.eval import load_processbench_sample
from prm.features import FeatureCache
from prm.model import EnsemblePRM
from tasks.problems import Trajectory

# this bench's row names (kept in its runs.jsonl) -> prm.train's select.mode
SELECT_MODE = {"active": SelectMode.uncertain, "random": SelectMode.random, "full": SelectMode.all}

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


def load_pool_split(out: Path, tune_n: int) -> tuple[list[Trajectory], list[Trajectory]]:
    """The cached pool (shuffle seed 0), split into the training pool and a held-out tail of `tune_n`
    trajectories that is never trained on: it picks tau and the hyperparameters (never the test items)."""
    pool = [Trajectory(**json.loads(line)) for line in (out / "pool.jsonl").read_text().splitlines()]
    return pool[: len(pool) - tune_n], pool[len(pool) - tune_n:]


def one_run(args, out: Path, pool, tune, evals, cache, mode: str, budget: float, seed: int,
            overrides: dict | None = None, tag: str = "runs") -> dict:
    """Fresh heads-only PRM (no backbone: the cached features are all it needs), trained by
    prm.train.train_on_pool() -> PRMLearner.update (the same stream/budget/selection/loss code as the CLI),
    oracle judge through the ledger, plain torch AdamW (no DeepSpeed in one process). Then scored from the
    cache on the held-out pool tail (tau tuning) and on ProcessBench (reported)."""
    from judges.metrics import processbench_f1
    from prm.eval import processbench_preds, tune_threshold
    from prm.train import train_on_pool
    o = {"epochs": args.epochs, "pos_weight": args.pos_weight, "head_lr": args.head_lr, **(overrides or {})}
    pc = replace(prm_config(args), seed=seed, pos_weight=o["pos_weight"], head_lr=o["head_lr"])
    prm = EnsemblePRM.heads_only(pc, cache.width)   # hidden step features: width = hidden size
    run_dir = out / tag / f"{mode}_{budget}_{seed}_{o['epochs']}_{o['pos_weight']}_{o['head_lr']}"
    select = PoolSelectConfig(SELECT_MODE[mode], budget)
    cfg = PRMTrainConfig(prm=pc, pool=PoolConfig(), judge="oracle", select=select, epochs=o["epochs"],
                         trainer=TrainerConfig(out_dir=str(run_dir), seed=seed, resume="never", save_every=10 ** 9,
                                               progress=False, deepspeed=False), run_eval=False)
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    summary = train_on_pool(cfg, pool, prm=prm, features=cache)
    train_s = time.perf_counter() - start

    def scores(items):
        feats = [cache.get(t.question, t.steps) for t in items]
        return [s.mean for s in prm.score([t.question for t in items], [t.steps for t in items], features=feats)]
    tune_scores = scores(tune)
    tau = tune_threshold(tune_scores, [t.first_error for t in tune])
    row = {"mode": mode, "budget": budget, "seed": seed, **o, "labels": summary["labels_used"], "pool": len(pool),
           "updates": summary["updates"], "train_seconds": train_s, "tau_tuned": tau,
           "heldout_f1_05": processbench_f1(processbench_preds(tune_scores, 0.5), [t.first_error for t in tune])["f1"],
           "heldout_f1_tuned": processbench_f1(processbench_preds(tune_scores, tau), [t.first_error for t in tune])["f1"]}
    for name, items in evals.items():
        sc, lab = scores(items), [t.first_error for t in items]
        for key, t in (("05", 0.5), ("tuned", tau)):
            r = processbench_f1(processbench_preds(sc, t), lab)
            row[f"{name}_f1_{key}"], row[f"{name}_acc_err_{key}"], row[f"{name}_acc_cor_{key}"] = \
                r["f1"], r["acc_error"], r["acc_correct"]
    row["seconds"] = time.perf_counter() - start
    return row


def _setup(args, out: Path):
    cache = FeatureCache.load(out / "features.safetensors")
    pool, tune = load_pool_split(out, args.tune_n)
    evals = {name: load_processbench_sample(name, args.eval_limit) for name in args.subsets}
    return pool, tune, evals, cache


def stage_sweep(args, out: Path) -> None:
    """Anti-collapse hyperparameters (pos_weight, epochs, head_lr), full data, seed 0, chosen on the
    held-out pool tail only (ProcessBench numbers are printed but never used to choose)."""
    pool, tune, evals, cache = _setup(args, out)
    path = out / "sweep.jsonl"
    for pw in args.sweep_pos_weight:
        for ep in args.sweep_epochs:
            for lr in args.sweep_head_lr:
                row = one_run(args, out, pool, tune, evals, cache, "full", 1.0, 0,
                              {"pos_weight": pw, "epochs": ep, "head_lr": lr}, tag="sweep")
                with path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)


def stage_runs(args, out: Path) -> None:
    pool, tune, evals, cache = _setup(args, out)
    runs_path = out / "runs.jsonl"
    done = set()
    if runs_path.is_file():
        done = {(r["mode"], r["budget"], r["seed"]) for r in map(json.loads, runs_path.read_text().splitlines())}
    plan = [("full", 1.0, s) for s in args.seeds] + [(m, b, s) for b in args.budgets if b < 1 for s in args.seeds
                                                     for m in ("active", "random")]
    for mode, budget, seed in plan:
        if (mode, budget, seed) in done:
            continue
        row = one_run(args, out, pool, tune, evals, cache, mode, budget, seed)
        with runs_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    report(out, args.subsets[0])


def stage_rescore(args, out: Path) -> None:
    """Re-score every saved run (runs/<name>/prm, heads only) on subsets whose features were added later
    (e.g. math): adds <sub>_f1_05 and, with --tune-on-subset T, gsm8k F1 at the tau tuned on T."""
    from judges.metrics import processbench_f1
    from prm.eval import processbench_preds, tune_threshold
    cache = FeatureCache.load(out / "features.safetensors")
    evals = {name: load_processbench_sample(name, args.eval_limit) for name in ("gsm8k", *args.subsets)}
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    for row in rows:
        run_dir = out / "runs" / f"{row['mode']}_{row['budget']}_{row['seed']}_{row['epochs']}_{row['pos_weight']}_{row['head_lr']}"
        prm = EnsemblePRM.load(run_dir / "prm", heads_only=True)
        sc = {}
        for name, items in evals.items():
            feats = [cache.get(t.question, t.steps) for t in items]
            sc[name] = [s.mean for s in prm.score([t.question for t in items], [t.steps for t in items], features=feats)]
            r = processbench_f1(processbench_preds(sc[name], 0.5), [t.first_error for t in items])
            row[f"{name}_f1_05"], row[f"{name}_acc_err_05"], row[f"{name}_acc_cor_05"] = r["f1"], r["acc_error"], r["acc_correct"]
        if args.tune_on_subset:
            t_items = evals[args.tune_on_subset]
            tau = tune_threshold(sc[args.tune_on_subset], [t.first_error for t in t_items])
            r = processbench_f1(processbench_preds(sc["gsm8k"], tau), [t.first_error for t in evals["gsm8k"]])
            row[f"tau_{args.tune_on_subset}"] = tau
            row[f"gsm8k_f1_{args.tune_on_subset}"], row[f"gsm8k_acc_err_{args.tune_on_subset}"], \
                row[f"gsm8k_acc_cor_{args.tune_on_subset}"] = r["f1"], r["acc_error"], r["acc_correct"]
    (out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report(out, "gsm8k")


def report(out: Path, subset: str = "gsm8k") -> None:
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    budgets = sorted({r["budget"] for r in rows if r["mode"] != "full"})
    results, md = {}, []

    def pick(mode, budget):
        return sorted((r for r in rows if r["mode"] == mode and r["budget"] == budget), key=lambda r: r["seed"])

    def ms(xs):
        return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)
    for key, label, f in (("05", "tau = 0.5", f"{subset}_f1_05"),
                          ("tuned", "tau tuned on the held-out PRM800K pool tail", f"{subset}_f1_tuned"),
                          ("heldout", "in-distribution: the held-out PRM800K pool tail itself, tau = 0.5",
                           "heldout_f1_05"),
                          ("math_tuned", "tau tuned on ProcessBench math (120 items), applied here", f"{subset}_f1_math"),
                          ("math", "tau = 0.5", "math_f1_05")):
        if f not in rows[0]:
            continue
        name = "ProcessBench math" if key == "math" else None
        name = name or ("PRM800K held-out tail" if key == "heldout" else f"ProcessBench {subset}")
        full = ms([r[f] for r in pick("full", 1.0)])
        lab_full = statistics.mean(r["labels"] for r in pick("full", 1.0))
        lines = [f"{name}, {label} (mean ± std over seeds {sorted({r['seed'] for r in rows})})", "",
                 "| budget | labels | active F1 | random F1 | active − random (paired by seed) |", "|---|---|---|---|---|"]
        table, reach = {}, None
        for b in budgets:
            a, r = pick("active", b), pick("random", b)
            if not a or not r:
                continue
            diffs = [x[f] - y[f] for x in a for y in r if x["seed"] == y["seed"]]
            table[b] = {"active": ms([x[f] for x in a]), "random": ms([y[f] for y in r]), "diff": ms(diffs),
                        "labels": statistics.mean(x["labels"] for x in a)}
            t = table[b]
            lines.append(f"| {b:.0%} | {t['labels']:.0f} | {t['active'][0]:.3f} ± {t['active'][1]:.3f} | "
                         f"{t['random'][0]:.3f} ± {t['random'][1]:.3f} | {t['diff'][0]:+.3f} ± {t['diff'][1]:.3f} |")
            if reach is None and t["active"][0] >= full[0]:
                reach = b
        lines.append(f"| 100% (full) | {lab_full:.0f} | {full[0]:.3f} ± {full[1]:.3f} | | |")
        lines.append(f"\nSmallest budget where active's mean F1 reaches full-data mean F1: "
                     f"{'none of those tested' if reach is None else f'{reach:.0%}'}\n")
        results[key] = {"full": full, "budgets": table, "active_reaches_full_at": reach}
        md += lines
    taus = [r["tau_tuned"] for r in rows]
    md.append(f"tuned tau over runs: min {min(taus):.3f}, median {statistics.median(taus):.3f}, max {max(taus):.3f}; "
              f"train seconds per run: median {statistics.median(r['train_seconds'] for r in rows):.1f}, "
              f"max {max(r['train_seconds'] for r in rows):.1f}")
    text = "\n".join(md)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(text)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(k, t) for k, t in (("05", f"ProcessBench {subset}, tau = 0.5"),
                                  ("tuned", f"ProcessBench {subset}, tau tuned on held-out PRM800K"),
                                  ("math_tuned", f"ProcessBench {subset}, tau tuned on PB math"),
                                  ("math", "ProcessBench math, tau = 0.5"),
                                  ("heldout", "held-out PRM800K tail (160), tau = 0.5")) if k in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1, 4.2), sharey=True)
    for ax, (key, label) in zip(axes, panels):
        res = results[key]
        xs = sorted(res["budgets"])
        for mode, color in (("active", "tab:blue"), ("random", "tab:orange")):
            ax.errorbar([x * 100 for x in xs] + [100], [res["budgets"][x][mode][0] for x in xs] + [res["full"][0]],
                        yerr=[res["budgets"][x][mode][1] for x in xs] + [res["full"][1]], marker="o", capsize=3,
                        label=mode, color=color)
        ax.axhline(res["full"][0], color="gray", linestyle="--", label=f"full data ({res['full'][0]:.3f})")
        ax.set_xlabel("label budget (% of the 640-trajectory pool)")
        ax.set_title(label, fontsize=9)
        ax.legend()
    axes[0].set_ylabel("F1 (first-error, ProcessBench metric)")
    fig.suptitle("ActPRM selection vs random, frozen SmolLM2-135M features, K = 32 heads, 3 seeds")
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("label_efficiency.png"), dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["features", "sweep", "runs", "rescore", "report"], required=True)
    ap.add_argument("--tune-on-subset", default=None, help="rescore: tune tau on this ProcessBench subset")
    ap.add_argument("--out", default="outputs/bench_prm")
    ap.add_argument("--backbone", default="smollm2-135m-instruct")
    ap.add_argument("--pool", type=int, default=800)
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--subsets", nargs="+", default=["gsm8k"])
    ap.add_argument("--eval-limit", type=int, default=120)
    ap.add_argument("--tune-n", type=int, default=160, help="held-out pool tail for tau / hyperparameters")
    ap.add_argument("--sweep-pos-weight", type=float, nargs="+", default=[1.0, 0.25, 0.1])
    ap.add_argument("--sweep-epochs", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--sweep-head-lr", type=float, nargs="+", default=[1e-3])
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
    {"features": stage_features, "sweep": stage_sweep, "runs": stage_runs, "rescore": stage_rescore,
     "report": lambda a, o: report(o, a.subsets[0])}[args.stage](args, out)


if __name__ == "__main__":
    sys.exit(main())
