"""The chain testbed, online: Eq. 5 selection vs random (same count) vs judge-all, and outcome-only RL.

    python -m bench.bench_chain_online --rounds 10 --seeds 0 1 2 3 4 --arms uncertain random all --budget 16 \
        --out outputs/bench_chain_online [-- extra hydra overrides for every run]
    python -m bench.bench_chain_online --report-only --out outputs/bench_chain_online

Each (arm, seed) is one `python -m rl.online --config-name online_chain` process (trainer.resume=auto:
a killed bench continues). Every PRM arm trains on the replay of all its paid labels and logs step
AUROC (pooled, within problem) and first-error F1 on the same fixed held-out judged set (the initial
policy's samples on other problems; identical across arms of one seed). The report gives mean ± 95 % CI
over seeds, paired differences against the first arm, and the plot (--plot).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from bench.chain_stats import fmt, mean_ci, paired
from bench.online_grid import load, run_dir, run_grid

ARMS = {
    "uncertain": ["select.mode=uncertain"],
    "random": ["select.mode=random"],
    "all": ["select.mode=all"],
    "outcome": ["select.mode=none", "algo.reward=outcome", "prm_update=none"],
    # levers for process rewards (judge-all labels): they enter after the PRM's first 8 rounds, or at a quarter weight
    "all_warmup8": ["select.mode=all", "algo.process_warmup_rounds=8"],
    "all_w0.25": ["select.mode=all", "algo.process_weight=0.25"],
    # the upper bound: the judge's labels of every sample as step rewards (what a perfect PRM would give)
    "judge_process": ["select.mode=all", "algo.process_source=judge", "schedule=serial"],
}
# sparse outcome (long chains): groups where every sample fails still carry step credit, so keep them
ARMS.update({f"{arm}_allgroups": [*ARMS[arm], "algo.filter_groups=false"] for arm in ("all", "judge_process")})
# claim (c), bench/claims/c_sparse.md, c_lucky.md: every group kept, the process source at the outcome's size
# (algo.process_scale=1), one arm per credit form; the task and its policy come as extra overrides
CLAIM_C = ["algo.filter_groups=false", "algo.process_scale=1.0"]
ARMS["outcome_c"] = ["select.mode=none", "algo.reward=outcome", "prm_update=none", "algo.filter_groups=false"]
ARMS.update({f"judge_{form}_c": [*ARMS["judge_process"], *CLAIM_C, f"algo.process_credit={form}"]
             for form in ("sum", "min", "first_error")})
ARMS["prm_c"] = ["select.mode=all", *CLAIM_C]                 # stage 2: the credit form that gained, as an extra
ARMS["implicit_c"] = ["select.mode=none", "prm_update=none", "algo.process_source=implicit", *CLAIM_C]
ARMS["orm_c"] = ["select.mode=all", "algo.process_source=orm", "replay.enabled=false", *CLAIM_C]
# the PRM's backbone trains too, its log-prob columns read from the frozen initial policy (the pool's best scorer)
ARMS["all_allgroups_trained"] = [*ARMS["all_allgroups"], "prm.train_mode=full", "prm.step_features=hidden_policy_logprob",
                                 "prm.lr=1e-3"]
REPO = Path(__file__).resolve().parents[1]


def budget(args, arm: str) -> list[str]:
    """Equal budget: Eq. 5 and random both capped at --budget judge calls a round; judge-all pays everything."""
    return [f"select.budget_per_round={args.budget}"] if args.budget and arm in ("uncertain", "random") else []


def run_all(args, extra: list[str]) -> None:
    run_grid(args.out, args.seeds, args.arms, args.rounds, lambda arm, seed, out: [
        "--config-name", "online_chain", f"rounds={args.rounds}", f"trainer.seed={seed}", f"task.seed={seed}",
        f"trainer.out_dir={out.resolve()}", "trainer.progress=false", "plot=false", "trainer.save_every=4",
        "keep_checkpoints=1", *ARMS[arm], *budget(args, arm), *extra], cwd=REPO, jobs=args.jobs)


def curves(args) -> dict:
    """arm -> seed -> {metric: [per round]} (judge calls cumulative)."""
    out = {}
    for arm in args.arms:
        for seed in args.seeds:
            logged = load(run_dir(args.out, arm, seed))
            rows = [r for r in logged if r["round"] >= 1][: args.rounds]
            if len(rows) < args.rounds:
                continue
            c = {k: [r.get(k, float("nan")) for r in rows] for k in
                 ("pass_rate", "prm/heldout_auroc", "prm/heldout_auroc_within", "prm/heldout_f1", "select/fraction")}
            calls, total = [], 0
            for r in rows:
                total += r.get("judge/calls", 0)
                calls.append(total)
            c["labels"] = calls
            # the policy on the fixed held-out problems (policy_eval.every): round -> pass rate, round 0 = initial policy
            c["eval"] = {r["round"]: r["eval/pass"] for r in logged if "eval/pass" in r and r["round"] <= args.rounds}
            c["eval_greedy"] = {r["round"]: r["eval/pass_greedy"] for r in logged
                                if "eval/pass_greedy" in r and r["round"] <= args.rounds}
            c["trace"] = {r["round"]: r["eval/trace_error"] for r in logged   # tasks with an exact step rule
                          if "eval/trace_error" in r and r["round"] <= args.rounds}
            out.setdefault(arm, {})[seed] = c
    return out


def to_target(c: dict, gain: float) -> tuple[float, float]:
    """(first evaluated round whose held-out pass is `gain` above the run's own round 0, judge calls paid up to
    it); NaN if none. Relative: the seeds' held-out problems start at different pass rates."""
    start = c["eval"].get(0, math.nan)
    for rnd in sorted(c["eval"]):
        if rnd and c["eval"][rnd] >= start + gain:
            return float(rnd), float(c["labels"][rnd - 1])
    return math.nan, math.nan


def eval_table(args, data: dict) -> list[str]:
    """Held-out pass (the policy on fixed problems) at the start and the end, its mean over the evaluations
    after round 0 (less noisy than one point), and the rounds / labels a run took to gain --target-gain; a run
    that never does counts as NaN (left out of the mean, counted in "runs reaching")."""
    if not any(c["eval"] for seeds in data.values() for c in seeds.values()):
        return []
    g = args.target_gain
    lines = ["", f"| arm (seeds) | held-out pass, round 0 | round {args.rounds} | mean over rounds 1-{args.rounds} "
                 f"evaluations | greedy, round 0 | greedy, round {args.rounds} | runs gaining {g} | rounds to +{g} | "
                 f"labels to +{g} |", "|---|---|---|---|---|---|---|---|---|"]
    ends, means = {}, {}
    for arm, seeds in data.items():
        first = [c["eval"].get(0, math.nan) for c in seeds.values()]
        ends[arm] = {s: c["eval"].get(args.rounds, math.nan) for s, c in seeds.items()}
        means[arm] = {s: sum(v for r, v in c["eval"].items() if r) / max(1, sum(1 for r in c["eval"] if r))
                      for s, c in seeds.items()}
        g0 = [c["eval_greedy"].get(0, math.nan) for c in seeds.values()]
        g1 = [c["eval_greedy"].get(args.rounds, math.nan) for c in seeds.values()]
        hit = [to_target(c, g) for c in seeds.values()]
        reached = sum(1 for r, _ in hit if r == r)
        lines.append(f"| {arm} ({len(seeds)}) | {fmt(first)} | {fmt(list(ends[arm].values()))} | "
                     f"{fmt(list(means[arm].values()))} | {fmt(g0)} | {fmt(g1)} | {reached}/{len(seeds)} | "
                     f"{fmt([r for r, _ in hit], 1)} | {fmt([n for _, n in hit], 0)} |")
    ref = args.arms[0]
    for arm in ends:
        if arm != ref and ref in ends:
            lines.append(f"| {ref} - {arm}, paired | | {fmt(paired(ends[ref], ends[arm]))} | "
                         f"{fmt(paired(means[ref], means[arm]))} | | | | | |")
    return lines


def trace_table(args, data: dict) -> list[str]:
    """Held-out trace error (share of passed samples with a wrong step) at round 0 and the last round, and the
    paired difference of the last against the first arm; nothing when no run logged it."""
    if not any(c.get("trace") for seeds in data.values() for c in seeds.values()):
        return []
    lines = ["", f"| arm (seeds) | held-out trace error, round 0 | round {args.rounds} |", "|---|---|---|"]
    ends = {}
    for arm, seeds in data.items():
        ends[arm] = {s: c["trace"].get(args.rounds, math.nan) for s, c in seeds.items()}
        lines.append(f"| {arm} ({len(seeds)}) | {fmt([c['trace'].get(0, math.nan) for c in seeds.values()])} | "
                     f"{fmt(list(ends[arm].values()))} |")
    ref = args.arms[0]
    lines += [f"| {ref} - {arm}, paired | | {fmt(paired(ends[ref], ends[arm]))} |" for arm in ends
              if arm != ref and ref in ends]
    return lines


def report(args) -> str:
    data = curves(args)
    last = args.last
    summary = {arm: {s: {"labels": c["labels"][-1], "pass_last": sum(c["pass_rate"][-last:]) / last,
                         "pass_first": sum(c["pass_rate"][:last]) / last,
                         "auroc": c["prm/heldout_auroc"][-1], "auroc_within": c["prm/heldout_auroc_within"][-1],
                         "auroc_first": c["prm/heldout_auroc"][0], "f1": c["prm/heldout_f1"][-1],
                         "sel_first": c["select/fraction"][0], "sel_last": sum(c["select/fraction"][-last:]) / last}
                     for s, c in seeds.items()} for arm, seeds in data.items()}
    keys = ("labels", "pass_first", "pass_last", "auroc_first", "auroc", "auroc_within", "f1", "sel_first", "sel_last")
    lines = [f"| arm (seeds) | labels paid | pass, first {last} rounds | pass, last {last} | held-out AUROC round 1 | "
             "AUROC last round | AUROC within | first-error F1 | selected, round 1 | selected, last rounds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, seeds in summary.items():
        lines.append(f"| {arm} ({len(seeds)}) | " + " | ".join(fmt([v[k] for v in seeds.values()], 0 if k == "labels" else 3)
                                                           for k in keys) + " |")
    lines += ["", "| paired difference (per seed) | labels paid | pass, last rounds | AUROC last round | AUROC within |",
              "|---|---|---|---|---|"]
    ref = args.arms[0]  # paired differences against the first arm named
    for arm in summary:
        if arm == ref or ref not in summary:
            continue
        d = {k: paired({s: v[k] for s, v in summary[ref].items()}, {s: v[k] for s, v in summary[arm].items()})
             for k in ("labels", "pass_last", "auroc", "auroc_within")}
        lines.append(f"| {ref} - {arm} | {fmt(d['labels'], 0)} | {fmt(d['pass_last'])} | {fmt(d['auroc'])} | "
                     f"{fmt(d['auroc_within'])} |")
    lines += eval_table(args, data) + trace_table(args, data)
    table = "\n".join(lines)
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1))
    Path(args.out, "table.md").write_text(table + "\n")
    plot(data, Path(args.plot))
    return table


def plot(data, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 5, figsize=(22, 4))
    panels = (("pass_rate", "pass rate (T = 1)"), ("labels", "judge calls paid (cumulative)"),
              ("prm/heldout_auroc", "held-out step AUROC"), ("select/fraction", "fraction sent to the judge"))
    for ax, (key, title) in zip(axes, panels):
        for i, (arm, seeds) in enumerate(data.items()):
            series = list(zip(*[c[key] for c in seeds.values()]))
            ms = [mean_ci(list(x)) for x in series]
            xs = range(1, len(ms) + 1)
            m = [a for a, _ in ms]
            h = [0 if b != b else b for _, b in ms]
            ax.plot(xs, m, label=f"{arm} ({len(seeds)} seeds)", color=f"C{i}")
            ax.fill_between(xs, [a - b for a, b in zip(m, h)], [a + b for a, b in zip(m, h)], color=f"C{i}", alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("round")
    for i, (arm, seeds) in enumerate(data.items()):   # held-out pass: only the evaluated rounds
        rounds = sorted(set.intersection(*[set(c["eval"]) for c in seeds.values()])) if seeds else []
        if rounds:
            ms = [mean_ci([c["eval"][r] for c in seeds.values()]) for r in rounds]
            m, h = [a for a, _ in ms], [0 if b != b else b for _, b in ms]
            axes[4].errorbar(rounds, m, yerr=h, marker="o", capsize=3, label=arm, color=f"C{i}")
    axes[4].set_title("pass rate, held-out problems (policy eval)")
    axes[4].set_xlabel("round")
    axes[0].legend(fontsize=8)
    fig.suptitle("chain testbed, online (mean and 95 % CI over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--arms", nargs="+", default=["uncertain", "random", "all"], choices=list(ARMS))
    ap.add_argument("--budget", type=int, default=16, help="judge calls a round for uncertain/random (0: uncapped)")
    ap.add_argument("--last", type=int, default=3, help="rounds averaged for the pass rate at the start/end")
    ap.add_argument("--target-gain", type=float, default=0.05,
                    help="held-out pass rate gain over round 0 (policy_eval.every runs) to reach")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    ap.add_argument("--out", default="outputs/bench_chain_online")
    ap.add_argument("--plot", default="bench/chain_online.png")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.report_only:
        run_all(args, extra)
    print(report(args))


if __name__ == "__main__":
    main()
