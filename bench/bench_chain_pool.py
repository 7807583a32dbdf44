"""The chain testbed, pool-based: the policy's pass rates by #ops, and label efficiency of active selection.

    python -m bench.bench_chain_pool --stage pool       # chain-tiny samples (T = 1) on train/test chains, rule-judged
    python -m bench.bench_chain_pool --stage runs       # active vs random vs full at budgets, seeds; + baselines
    python -m bench.bench_chain_pool --stage report     # table (mean ± 95 % CI, paired active - random), plot
    python -m bench.bench_chain_pool --stage runs --step-features hidden_logprob   # lever: + the step's log-probs
    python -m bench.bench_chain_pool --stage runs --train-mode full --budgets 0.3   # lever: fine-tuned backbone

The PRM is K = 32 heads on the policy's own frozen hidden states at each step separator (EnsemblePRM with
backbone chain-tiny, features computed once; prm.step_features=hidden_logprob adds the backbone's log min /
log mean token probability of the step; --train-mode full fine-tunes the backbone too), trained by
prm.train.train_on_pool() (the CLI's stream/selection/budget code). Step AUROC (pooled and within problem) and first-error F1 on held-out problems; tau is tuned
on the pool's held-out tail. The free baseline: the policy's per-step confidence (prm.confidence).
"""
from __future__ import annotations

import argparse
import functools
import json
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path

import torch

from bench.chain_misconception_auroc import product_auroc
from bench.chain_stats import fmt, mean_ci, paired
from core.answers import AnswerChecker
from core.config import TrainerConfig
from core.steps import split_steps
from prm.config import PoolConfig, PoolSelectConfig, PRMConfig, PRMTrainConfig, SelectMode
from prm.eval import tune_threshold
from prm.quality import scorer_quality
from rl.search_select import SELECTORS, ScoreSpec, Solution, attach_answer
from tasks.chain.problems import ChainSpec, chain_problems, parse_question
from tasks.problems import Trajectory

MIN_STEP = ScoreSpec(aggregate="min")   # a sample's score for best-of-n: its lowest step score


def prm_config(args, seed: int = 0) -> PRMConfig:
    return PRMConfig(backbone=args.model, dtype="fp32", num_heads=32, head_hidden=64, train_mode=args.train_mode,
                     step_features=args.step_features, lr=args.lr, max_length=256, batch_size=args.batch_size,
                     head_lr=args.head_lr, pos_weight=1.0, seed=seed, delta_pred=args.delta_pred,
                     delta_std=args.delta_std)


def sample(model, tok, problems, n: int, temperature: float) -> list[tuple]:
    from rl.engines import make_rollout
    from tasks.registry import format_prompt
    rollout = make_rollout("hf", model=model, tokenizer=tok, batch_size=64)
    prompts = [format_prompt(tok, p.question) for p in problems]
    groups = rollout.generate(prompts, n, 110, temperature if temperature > 0 else 1.0) if temperature > 0 else \
        rollout.generate(prompts, n, 110, 0.0)
    return [(p, c.text) for p, g in zip(problems, groups) for c in g]


def judged(items) -> list[Trajectory]:
    """(problem, completion) pairs -> trajectories labelled by the chain judge; meta.passed is the answer
    checker's verdict on the completion (what rl.online's verify phase computes)."""
    from judges.registry import make_judge
    judge = make_judge({"name": "chain"})
    checker = AnswerChecker()
    try:
        passed = checker.score_solutions([p.reference_answer for p, _ in items], [text for _, text in items])
    finally:
        checker.close()
    out = []
    for (p, text), ok in zip(items, passed):
        steps = split_steps(text) or ["(empty)"]
        out.append(Trajectory(p.question, steps, judge.judge(p.question, steps).first_error, p.reference_answer,
                              meta={"passed": ok, "ops": len(parse_question(p.question)[1])}))
    return out


def problem_file(path: str) -> list:
    """A fixed problem set (JSONL: question, reference_answer), e.g. a claim's checked set (bench/claims)."""
    from tasks.problems import Problem
    return [Problem(r["question"], r["reference_answer"]) for r in map(json.loads, Path(path).read_text().splitlines())]


def stage_pool(args, out: Path) -> None:
    from core.models import load_model
    torch.manual_seed(0)
    model, tok = load_model(args.model, "fp32")
    spec = ChainSpec()
    train_p = problem_file(args.pool_set) if args.pool_set else chain_problems(101, args.pool_problems, spec)
    test_p = problem_file(args.test_set) if args.test_set else chain_problems(202, args.test_problems, spec)
    start = time.perf_counter()
    pool, test = judged(sample(model, tok, train_p, args.n, 1.0)), judged(sample(model, tok, test_p, args.test_n, 1.0))
    greedy = judged(sample(model, tok, test_p, 1, 0.0))
    tune = judged(sample(model, tok, problem_file(args.tune_set), args.n, 1.0)) if args.tune_set else []
    for name, items in (("pool", pool), ("test", test), ("greedy", greedy)) + ((("tune", tune),) if tune else ()):
        with (out / f"{name}.jsonl").open("w") as fh:
            fh.writelines(json.dumps({**t.to_json(), "meta": t.meta}) + "\n" for t in items)
    print(f"sampled + judged {len(pool) + len(test) + len(greedy)} in {time.perf_counter() - start:.0f} s")


def load(out: Path, name: str) -> list[Trajectory]:
    return [Trajectory(**json.loads(line)) for line in (out / f"{name}.jsonl").read_text().splitlines()]


def features(args, out: Path, items):
    from prm.features import FeatureCache
    from prm.model import EnsemblePRM
    if args.train_mode != "frozen":
        return None  # the backbone trains: no features to cache
    path = out / ("features.safetensors" if args.step_features == "hidden" else f"features_{args.step_features}.safetensors")
    if path.is_file():
        return FeatureCache.load(path)
    prm = EnsemblePRM(prm_config(args))
    cache = FeatureCache(256, dtype=torch.float32)
    cache.compute(prm, [t.question for t in items], [t.steps for t in items], 64)
    cache.save(path)
    return cache


def quality(items, scores, tau):
    """+ auroc_product78: right vs wrong "a * 7 = v" / "a * 8 = v" steps, each checked on its own operands
    (what best-of-N needs to rank the misconception below the right product)."""
    return {**scorer_quality([t.question for t in items], [t.first_error for t in items], scores, tau),
            **{f"auroc_{kind}": kind_auroc(items, scores, kind) for kind in ("misconception", "slip")},
            "auroc_product78": product_auroc([t.steps for t in items], scores)}


def kind_auroc(items, scores, kind: str) -> float:
    """Step AUROC of the error steps of one kind (error_kind) against every correct step: a trajectory
    whose first error is of another kind keeps only its correct steps before that error."""
    from prm.quality import step_auroc
    firsts, kept = [], []
    for t, s in zip(items, scores):
        other = t.first_error >= 0 and error_kind(t) != kind
        firsts.append(-1 if other else t.first_error)
        kept.append(list(s)[: t.first_error] if other else s)
    return step_auroc(firsts, kept)


def groups(items):
    out = defaultdict(list)
    for i, t in enumerate(items):
        out[t.question].append(i)
    return list(out.values())


@functools.cache
def _answer(steps: tuple[str, ...]) -> tuple[str | None, str | None]:
    solution = attach_answer(Solution(list(steps), 0))
    return solution.answer, solution.key


def solved(items, scores, selector: str, n: int | None = None) -> float:
    """Share of problems where rl.search_select's selector, given the first n samples of the problem
    scored by their lowest step (ScoreSpec min), picks a sample that passed. Samples without an answer are
    never picked; a problem none of whose samples answers counts as unsolved."""
    hits = 0
    for g in groups(items):
        solutions = [Solution(items[i].steps, 0, list(scores[i]), [], *_answer(tuple(items[i].steps))) for i in g[:n]]
        pick = SELECTORS[selector](solutions, MIN_STEP)
        hits += pick is not None and bool(items[g[pick]].meta["passed"])
    return hits / len(groups(items))


def best_of_n(items, scores, n: int | None = None) -> float:
    """Best-of-n: the answered sample with the highest min-step score (ties: the first)."""
    return solved(items, scores, "vanilla", n)


def weighted(items, scores, n: int | None = None) -> float:
    """Weighted best-of-n (search-and-learn): the answer whose samples' min-step scores sum highest."""
    return solved(items, scores, "weighted", n)


def majority(items, n: int | None = None) -> float:
    """The most frequent answer of the first n samples (ties: first seen)."""
    return solved(items, [[1.0] for _ in items], "majority", n)


def selection_curves(items, scores) -> dict:
    """best-of-n and weighted best-of-n at every n in NS up to the samples per problem."""
    ns = [n for n in NS if n <= len(groups(items)[0])]
    return {"bon": {str(n): best_of_n(items, scores, n) for n in ns},
            "wbon": {str(n): weighted(items, scores, n) for n in ns}}


NS = (1, 2, 4, 8, 16, 32, 64)


def tuned(tune, tune_scores) -> float:
    """prm.eval's tau tuning on the tune split, over the grid 0.01 .. 0.99 (where F1 is undefined, as when
    the weak policy leaves almost no all-correct trajectory, it maximises the share of first errors named)."""
    return tune_threshold(tune_scores, [t.first_error for t in tune], candidates=TAUS)


TAUS = [i / 100 for i in range(1, 100)]


def baselines(args, out: Path, tune, test) -> dict:
    from core.models import load_model
    from prm.confidence import PolicyConfidence
    model, tok = load_model(args.model, "fp32")
    rows = {}
    for reduce in ("min", "mean"):
        conf = PolicyConfidence(model, tok, reduce, batch_size=64)
        tau = tuned(tune, conf([t.question for t in tune], [t.steps for t in tune]))
        test_scores = conf([t.question for t in test], [t.steps for t in test])
        rows[f"confidence_{reduce}"] = {**quality(test, test_scores, tau), "tau": tau,
                                        "best_of_n": best_of_n(test, test_scores), **selection_curves(test, test_scores)}
    greedy = load(out, "greedy")
    ns = [n for n in NS if n <= len(groups(test)[0])]
    rows["selection"] = {"pass_at_1": sum(t.meta["passed"] for t in test) / len(test), "majority": majority(test),
                         "majority_n": {str(n): majority(test, n) for n in ns},
                         "oracle_n": {str(n): sum(any(test[i].meta["passed"] for i in g[:n]) for g in groups(test))
                                      / len(groups(test)) for n in ns},
                         "greedy": sum(t.meta["passed"] for t in greedy) / len(greedy),
                         "oracle_best_of_n": sum(any(test[i].meta["passed"] for i in g) for g in groups(test))
                         / len(groups(test)), "n": len(groups(test)[0])}
    return rows


def train_run(args, out: Path, pool, cache, mode: str, budget: float, seed: int, outcome=None):
    """A PRM trained by prm.train.train_on_pool on `pool` (streamed in the seed's own order) under `mode` at
    `budget`: heads alone on `cache`'s features, or the whole PRM (--train-mode full, cache None).
    `outcome` (trajectory -> bool): train it as an outcome reward model on those verdicts instead.
    Returns (the PRM, train_on_pool's summary)."""
    from prm.model import EnsemblePRM, feature_dim
    from prm.train import train_on_pool
    pc = prm_config(args, seed)
    prm = EnsemblePRM(pc) if cache is None else EnsemblePRM.heads_only(pc, cache.width - feature_dim(pc, 0))
    run_dir = out / "runs" / f"{mode}_{budget}_{seed}"
    select = PoolSelectConfig({"active": SelectMode.uncertain, "random": SelectMode.random, "full": SelectMode.all}[mode],
                              budget)
    cfg = PRMTrainConfig(prm=pc, pool=PoolConfig(), judge="oracle", select=select, epochs=args.epochs,
                         trainer=TrainerConfig(out_dir=str(run_dir), seed=seed, resume="never", save_every=10 ** 9,
                                               progress=False, deepspeed=False), run_eval=False)
    shutil.rmtree(run_dir, ignore_errors=True)
    shuffled = list(pool)
    random.Random(seed).shuffle(shuffled)  # each seed streams the pool in its own order
    outcomes = None if outcome is None else [bool(outcome(t)) for t in shuffled]
    summary = train_on_pool(cfg, shuffled, prm=prm, features=cache, outcomes=outcomes)
    shutil.rmtree(run_dir, ignore_errors=True)
    return prm, summary


def prm_scores(prm, cache, items) -> list[list[float]]:
    """The PRM's step scores (ensemble means) of `items`, from cached features where there are any."""
    feats = [cache.get(t.question, t.steps) for t in items] if cache is not None else None
    return [s.mean for s in prm.score([t.question for t in items], [t.steps for t in items], features=feats)]


def one_run(args, out: Path, pool, tune, test, cache, mode: str, budget: float, seed: int) -> dict:
    prm, summary = train_run(args, out, pool, cache, mode, budget, seed)
    scores = functools.partial(prm_scores, prm, cache)
    tau = tuned(tune, scores(tune))
    test_scores = scores(test)
    row = {"mode": mode, "budget": budget, "seed": seed, "labels": summary["labels_used"], "tau": tau,
           **quality(test, test_scores, tau), "best_of_n": best_of_n(test, test_scores),
           **selection_curves(test, test_scores)}
    if args.per_problem:   # the raw rows a claim's intervals over problems need: (label, predicted first error)
        from core.steps import first_below
        row["per_problem"] = defaultdict(list)
        for t, s in zip(test, test_scores):
            row["per_problem"][t.question].append([t.first_error, first_below(list(s), tau)])
    return row


def tag(args) -> str:
    return ("" if args.step_features == "hidden" else f"_{args.step_features}") + \
        ("" if args.train_mode == "frozen" else f"_{args.train_mode}") + args.tag


def stage_runs(args, out: Path) -> None:
    allp, test = load(out, "pool"), load(out, "test")
    pool, tune = allp[: len(allp) - args.tune_n], allp[len(allp) - args.tune_n:]
    if (out / "tune.jsonl").is_file():   # a validation set of its own (--tune-set): the whole pool trains
        pool, tune = allp, load(out, "tune")
        allp = allp + tune
    cache = features(args, out, allp + test)
    if not (out / f"baselines{args.tag}.json").is_file():
        (out / f"baselines{args.tag}.json").write_text(json.dumps(baselines(args, out, tune, test), indent=1))
    path = out / f"runs{tag(args)}.jsonl"
    # a killed run set resumes: a (mode, budget, seed) already written is not trained again
    done = {(r["mode"], r["budget"], r["seed"]) for r in map(json.loads, path.read_text().splitlines())} \
        if path.is_file() else set()
    todo = [(mode, budget, seed) for seed in args.seeds
            for mode, budget in [(m, b) for b in args.budgets for m in ("active", "random")] + [("full", 1.0)]]
    with path.open("a") as fh:
        for mode, budget, seed in todo:
            if (mode, budget, seed) in done:
                continue
            row = one_run(args, out, pool, tune, test, cache, mode, budget, seed)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            print({k: v for k, v in row.items() if k != "per_problem"}, flush=True)


def policy_table(out: Path) -> str:
    lines = ["| ops | sampled pass (T=1) | greedy pass | trajectories with a chain-judged error |", "|---|---|---|---|"]
    test, greedy = load(out, "test"), load(out, "greedy")
    for ops in range(3, 9):
        s = [t for t in test if t.meta["ops"] == ops]
        g = [t for t in greedy if t.meta["ops"] == ops]
        if s:
            lines.append(f"| {ops} | {sum(t.meta['passed'] for t in s) / len(s):.2f} (n={len(s)}) | "
                         f"{sum(t.meta['passed'] for t in g) / max(len(g), 1):.2f} (n={len(g)}) | "
                         f"{sum(t.first_error != -1 for t in s) / len(s):.2f} |")
    wrong = [t for t in test if t.first_error >= 0]
    kinds = [error_kind(t) for t in wrong]
    lines += ["", f"First errors of the {len(wrong)} erroneous held-out samples: "
              + ", ".join(f"{k} {kinds.count(k)}" for k in ("misconception", "slip", "other"))]
    return "\n".join(lines)


def error_kind(t: Trajectory) -> str:
    """misconception (x * 7 / x * 8 written one table row low), slip (another false equation), other."""
    import tasks.chain.labels as jc
    from tasks.chain.problems import ChainStep, misconceived
    m = jc.STEP.fullmatch(t.steps[t.first_error].strip())
    if m is None:
        return "other"
    step, written = ChainStep(int(m[1]), m[2], int(m[3])), int(m[4])
    if misconceived(step) == written:
        return "misconception"
    return "slip" if jc.apply(step.a, step.op, step.b) != written else "other"


def stage_report(args, out: Path) -> None:
    rows = [json.loads(line) for line in (out / f"runs{tag(args)}.jsonl").read_text().splitlines()]
    by = defaultdict(dict)
    for r in rows:
        by[(r["mode"], r["budget"])][r["seed"]] = r
    base = json.loads((out / f"baselines{args.tag}.json").read_text())
    metrics = ("auroc", "auroc_within", "acc_error", "f1", "auroc_misconception", "auroc_slip", "auroc_product78")
    lines = [policy_table(out), "", "| PRM / scorer | labels | step AUROC | AUROC within problem | first error named "
             "(erroneous items) | first-error F1 | AUROC, misconception errors | AUROC, slips | AUROC, right vs wrong "
             "x 7 / x 8 product |", "|---|---|---|---|---|---|---|---|---|"]
    for name, b in base.items():
        if name == "selection":
            continue
        lines.append(f"| {name} (free) | 0 | " + " | ".join(f"{b.get(m, float('nan')):.3f}" for m in metrics) + " |")
    for (mode, budget), seeds in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rs = list(seeds.values())
        lines.append(f"| {mode} {budget:.0%} ({len(rs)} seeds) | {fmt([r['labels'] for r in rs], 0)} | "
                     + " | ".join(fmt([r.get(m, float("nan")) for r in rs]) for m in metrics) + " |")
    lines += ["", "| budget | active - random: AUROC | AUROC within | first error named | F1 | AUROC, misconceptions | "
              "seeds active > random (AUROC) |", "|---|---|---|---|---|---|---|"]
    metrics = metrics[:5]
    for budget in args.budgets:
        a, r = by.get(("active", budget), {}), by.get(("random", budget), {})
        diffs = {m: paired({s: x.get(m, float("nan")) for s, x in a.items()},
                           {s: x.get(m, float("nan")) for s, x in r.items()}) for m in metrics}
        wins = sum(d > 0 for d in diffs["auroc"])
        lines.append(f"| {budget:.0%} | " + " | ".join(fmt(diffs[m]) for m in metrics)
                     + f" | {wins}/{len(diffs['auroc'])} |")
    sel = base["selection"]
    full = [r["best_of_n"] for r in by.get(("full", 1.0), {}).values()]
    lines += ["", f"Best-of-{sel['n']} on the held-out problems (same samples for every selector):", "",
              "| selector | problems solved |", "|---|---|",
              f"| one sample (pass@1) | {sel['pass_at_1']:.3f} |", f"| greedy decoding | {sel['greedy']:.3f} |",
              f"| majority vote | {sel['majority']:.3f} |",
              f"| policy confidence (min token prob) | {base['confidence_min']['best_of_n']:.3f} |",
              f"| policy confidence (mean) | {base['confidence_mean']['best_of_n']:.3f} |",
              f"| PRM, full pool ({len(full)} seeds), min step score | {fmt(full)} |",
              f"| oracle (any sample right) | {sel['oracle_best_of_n']:.3f} |"]
    lines += search_table(by, base)
    table = "\n".join(lines)
    (out / f"table{tag(args)}.md").write_text(table + "\n")
    print(table)
    plot(by, base, args.budgets, Path(args.plot), f"{args.train_mode} backbone, {args.step_features} features")


def search_table(by, base) -> list[str]:
    """Problems solved vs n, every selector on the same first n samples of each problem (equal compute:
    n policy samples; the PRM and the confidence scorer each read every sample once)."""
    sel = base["selection"]
    if "majority_n" not in sel:
        return []
    ns = list(sel["majority_n"])
    full = list(by.get(("full", 1.0), {}).values())
    rows = [("majority vote", {n: f"{sel['majority_n'][n]:.3f}" for n in ns})]
    for name in ("confidence_min", "confidence_mean"):
        rows += [(f"{name} (free), best-of-n", {n: f"{base[name]['bon'][n]:.3f}" for n in ns}),
                 (f"{name} (free), weighted", {n: f"{base[name]['wbon'][n]:.3f}" for n in ns})]
    if full and "bon" in full[0]:
        rows += [(f"PRM full pool ({len(full)} seeds), best-of-n", {n: fmt([r["bon"][n] for r in full]) for n in ns}),
                 (f"PRM full pool ({len(full)} seeds), weighted", {n: fmt([r["wbon"][n] for r in full]) for n in ns})]
    rows.append(("oracle (any of n right)", {n: f"{sel['oracle_n'][n]:.3f}" for n in ns}))
    return (["", f"Problems solved vs n (greedy decoding: {sel['greedy']:.3f}):", "",
             "| selector | " + " | ".join(f"n = {n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
            + [f"| {name} | " + " | ".join(v[n] for n in ns) + " |" for name, v in rows])


def plot(by, base, budgets, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = [m for m in ("auroc", "auroc_within", "auroc_misconception") if m in base["confidence_min"]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
    for ax, metric in zip(axes, metrics):
        for mode, color in (("active", "C0"), ("random", "C1")):
            ms = [mean_ci([r.get(metric, float("nan")) for r in by.get((mode, b), {}).values()]) for b in budgets]
            ax.errorbar([b * 100 for b in budgets], [m for m, _ in ms], yerr=[h for _, h in ms], label=mode,
                        color=color, capsize=3, marker="o")
        full = mean_ci([r.get(metric, float("nan")) for r in by.get(("full", 1.0), {}).values()])
        ax.axhline(full[0], color="k", ls="--", label="full pool")
        ax.axhline(base["confidence_min"][metric], color="C2", ls=":", label="policy confidence (min)")
        ax.set_xlabel("labels (% of pool)")
        ax.set_ylabel(f"step {metric.replace('_', ' ')}")
        ax.legend(fontsize=8)
    fig.suptitle(f"chain testbed: PRM heads on chain-tiny ({title}; 95 % CI over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["pool", "runs", "report"], required=True)
    ap.add_argument("--out", default="outputs/bench_chain_pool")
    ap.add_argument("--pool-problems", type=int, default=400)
    ap.add_argument("--test-problems", type=int, default=120)
    ap.add_argument("--n", type=int, default=4, help="samples per pool problem")
    ap.add_argument("--test-n", type=int, default=32, help="samples per held-out problem (best-of-n)")
    ap.add_argument("--tune-n", type=int, default=300)
    ap.add_argument("--budgets", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.3, 0.5],
                    help="active/random budgets (none: only the full-pool PRM of each seed)")
    ap.add_argument("--tag", default="", help="suffix of this run set's files (runs<...><tag>.jsonl, baselines<tag>.json)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--head-lr", type=float, default=3e-3)
    ap.add_argument("--delta-pred", type=float, default=0.9)
    ap.add_argument("--delta-std", type=float, default=0.01)
    ap.add_argument("--plot", default="bench/chain_label_efficiency.png")
    ap.add_argument("--step-features", choices=["hidden", "hidden_logprob", "hidden_policy_logprob"], default="hidden",
                    help="prm.step_features: hidden_logprob adds the step's log min / mean token probability")
    ap.add_argument("--train-mode", choices=["frozen", "full"], default="frozen", help="prm.train_mode")
    ap.add_argument("--lr", type=float, default=1e-3, help="backbone lr (--train-mode full)")
    ap.add_argument("--model", default="chain-tiny", help="the policy (a name or a build's directory)")
    ap.add_argument("--pool-set", help="JSONL problems instead of generator seed 101's (bench/claims)")
    ap.add_argument("--test-set", help="JSONL problems instead of generator seed 202's")
    ap.add_argument("--tune-set", help="JSONL problems to tune tau on instead of the pool's tail")
    ap.add_argument("--per-problem", action="store_true", help="each run keeps (label, predicted) per test problem")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    {"pool": stage_pool, "runs": stage_runs, "report": stage_report}[args.stage](args, out)


if __name__ == "__main__":
    main()
