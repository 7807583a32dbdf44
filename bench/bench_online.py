"""Long online runs side by side: uncertainty selection vs judge-all vs outcome-only (and random).

    python -m bench.bench_online --rounds 30 --seeds 0,1 --modes selection,judge_all,outcome_only \
        --out bench/online_runs  [-- extra hydra overrides for every run]
    python -m bench.bench_online --report-only --out bench/online_runs     # table + plot from finished runs

Each (mode, seed) is one `python -m rl.online` process with its own out_dir (trainer.resume=auto: a
killed bench continues where it stopped). The report compares pass rate and judge calls per round
(mean over seeds) and writes <out>/online_compare.png and <out>/summary.json.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.online_grid import load, run_dir, run_grid

MODES = {
    "selection": ["select.mode=uncertain", "algo.reward=both", "prm_update=pre_update_rewards"],
    "judge_all": ["select.mode=all", "algo.reward=both", "prm_update=pre_update_rewards"],
    "random": ["select.mode=random", "algo.reward=both", "prm_update=pre_update_rewards"],
    "outcome_only": ["select.mode=none", "algo.reward=outcome", "prm_update=none"],
}
# Small settings so 30+ rounds x seeds x modes fit the shared 2-core machine.
SMALL = ["task.prompts_per_round=3", "rollout.n=4", "rollout.max_new_tokens=24", "algo.mini_batch_size=12",
         "algo.micro_batch_size=12", "policy.lr=1e-5", "trainer.save_every=10", "trainer.progress=false", "plot=false",
         "keep_checkpoints=1"]


def run_all(args, extra: list[str]) -> None:
    run_grid(args.out, args.seeds, args.modes, args.rounds, lambda mode, seed, out: [
        f"rounds={args.rounds}", f"trainer.seed={seed}", f"task.seed={seed}", f"trainer.out_dir={out}", *SMALL,
        *MODES[mode], *extra])


def report(args) -> dict:
    root = Path(args.out)
    summary, curves = {}, {}
    for mode in args.modes:
        runs = [load(run_dir(root, mode, seed)) for seed in args.seeds]
        runs = [r for r in runs if r]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        passed = np.array([[m["pass_rate"] for m in r[:n]] for r in runs])
        calls = np.array([[m.get("judge/calls", 0) for m in r[:n]] for r in runs])
        secs = np.array([[m.get("timing/round", 0) for m in r[:n]] for r in runs])
        last = max(1, n // 3)
        summary[mode] = {"seeds": len(runs), "rounds": n,
                         "pass_first_third": float(passed[:, :last].mean()), "pass_last_third": float(passed[:, -last:].mean()),
                         "pass_last_third_per_seed": [float(x) for x in passed[:, -last:].mean(1)],
                         "judge_calls_per_round": float(calls.mean()), "judge_calls_total_per_seed": float(calls.sum(1).mean()),
                         "round_seconds": float(secs.mean())}
        curves[mode] = (passed.mean(0), calls.mean(0), passed.std(0))
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(curves, root / "online_compare.png")
    print(f"{'mode':14s} {'seeds':>5s} {'rounds':>6s} {'pass 1st 1/3':>12s} {'pass last 1/3':>13s} "
          f"{'judge calls/round':>17s} {'s/round':>8s}")
    for mode, s in summary.items():
        print(f"{mode:14s} {s['seeds']:5d} {s['rounds']:6d} {s['pass_first_third']:12.3f} {s['pass_last_third']:13.3f} "
              f"{s['judge_calls_per_round']:17.1f} {s['round_seconds']:8.1f}")
    return summary


def plot(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, (passed, calls, spread) in curves.items():
        rounds = np.arange(1, len(passed) + 1)
        smooth = np.convolve(passed, np.ones(5) / 5, mode="valid") if len(passed) >= 5 else passed
        line, = ax1.plot(rounds[len(rounds) - len(smooth):], smooth, label=mode)
        ax1.fill_between(rounds, passed - spread, passed + spread, color=line.get_color(), alpha=.08)
        ax2.plot(rounds, calls, label=mode, color=line.get_color())
    ax1.set(xlabel="round", ylabel="pass rate (5-round mean; band: seed spread)", title="policy reward")
    ax2.set(xlabel="round", ylabel="judge calls (mean over seeds)", title="judge cost")
    for ax in (ax1, ax2):
        ax.grid(alpha=.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    ap.add_argument("--modes", type=lambda s: s.split(","), default=["selection", "judge_all", "outcome_only"])
    ap.add_argument("--out", default="bench/online_runs")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if not args.report_only:
        run_all(args, extra)
    report(args)
