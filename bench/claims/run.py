"""`python -m bench.claims.run <claim>`: a pre-registered claim end to end, from nothing to its table.

    python -m bench.claims.run d_search             # every stage; a finished stage is skipped (resume)
    python -m bench.claims.run e_prm_quality        # every claim has a runner
    python -m bench.claims.run c_lucky --jobs 4     # runs that read none of each other's outputs: 4 at a time
    python -m bench.claims.run d_search --dry-run   # print every command it would run, run nothing
    python -m bench.claims.run c_lucky --collect    # raw rows and table of the runs finished so far, run nothing

Stages, each writing under --out (default outputs/claims/<id>) and skipped when its output exists:
    sets     draw the claim's problem sets, the test set checked fresh (bench/claims/problem_sets.py),
             written as sets/<name>.jsonl (task=chain task.source=... reads them) with sets.json (sizes, drops)
    builds   the policy builds the claim names (python -m tasks.chain.policy --seed N: pinned, quality-checked;
             a testbed claim's own, bench/claims/run_c.py)
    arms     the claim's own commands, each printed before it runs (RUNNERS below)
    raw      the runs' records -> the claim's raw file (one row per unit, arm, problem)
    report   python -m bench.claims.report <claim>: table, plot, status
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.claims import run_c
from bench.claims.metrics import f1_counts
from bench.claims.problem_sets import claim_problem_sets
from bench.claims.spec import ROOT, Claim, claim_path, load_claim
from bench.claims.steps import Step, run_step, run_steps


def write_sets(claim: Claim, out: Path, draw: Callable[[Claim], dict] = claim_problem_sets) -> dict:
    """The claim's sets as `draw` makes and checks them, written for task.source / policy_eval.source."""
    sets = draw(claim)
    (out / "sets").mkdir(parents=True, exist_ok=True)
    for name, drawn in sets.items():
        rows = [{"question": p.question, "reference_answer": str(p.reference_answer)} for p in drawn.problems]
        (out / "sets" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {name: {"role": d.spec.role.value, "generator_seeds": list(d.spec.generator_seeds),
                      "per_seed": d.spec.per_seed, "problems": len(d.problems), "dropped": d.dropped}
               for name, d in sets.items()}
    (out / "sets.json").write_text(json.dumps(summary, indent=1))
    return summary


def drawn_sets(claim: Claim, out: Path, draw: Callable[[Claim], dict]) -> dict:
    """The sets under `out`, drawn now if there are none. Sets drawn from other problem sets than the claim file
    names (the file was edited after they were drawn) are refused, not reused: runs may already have read them."""
    if not (out / "sets.json").is_file():
        return write_sets(claim, out, draw)
    summary = json.loads((out / "sets.json").read_text())
    for spec in claim.problem_sets:
        drawn = summary.get(spec.name, {})
        wanted = {"role": spec.role.value, "generator_seeds": list(spec.generator_seeds), "per_seed": spec.per_seed}
        if any(drawn.get(k, v) != v for k, v in wanted.items()) or not drawn:   # older files lack per_seed
            raise SystemExit(f"{out / 'sets.json'}: set {spec.name!r} was drawn as {drawn or 'nothing'}, but "
                             f"{claim.path} names {wanted}; move {out} aside to draw the sets again")
    return summary


def build_dir(seed: int) -> Path:
    from core.models import cache_root
    from tasks.chain.policy import ChainModelSpec, model_dir
    return model_dir(cache_root(), ChainModelSpec(seed=seed).name)


def build_steps(claim: Claim) -> list[Step]:
    return [Step(f"build {b}", ["python", "-m", "tasks.chain.policy", "--seed", str(b)], build_dir(b) / "quality.json", build=b)
            for b in claim.builds]


# ------------------------------------------------------------------ claim (d): search at N = 16
# arm -> (rl.search setting, record label, n)
SEARCH_ARMS = {"greedy": ("chain_prm_min", "greedy", 1), "majority16": ("chain_prm_min", "best_of_n/majority", 16),
               "bon_prm_vanilla16": ("chain_prm_min", "best_of_n/vanilla", 16),
               "bon_prm_weighted16": ("chain_prm_min", "best_of_n/weighted", 16),
               "bon_conf_vanilla16": ("chain_confidence", "best_of_n/vanilla", 16),
               "bon_conf_weighted16": ("chain_confidence", "best_of_n/weighted", 16),
               "beam_prm16": ("chain_prm_min", "beam/vanilla", 16), "beam_conf16": ("chain_confidence", "beam/vanilla", 16),
               "dvts_prm16": ("chain_prm_min", "dvts/vanilla", 16), "dvts_conf16": ("chain_confidence", "dvts/vanilla", 16)}


def search_steps(claim: Claim, out: Path) -> list[Step]:
    """Per build: its samples on the pool set (rl.search job=pool), the PRM trained on them with the chain
    judge's labels (prm.train, as bench/RESULTS.md's chain PRM), then both search settings on the test set."""
    from bench.bench_search import command
    sets, steps = out / "sets", []
    for b in claim.builds:
        model, here = str(build_dir(b)), out / f"build{b}"
        chain = ["task=chain", "policy=chain_tiny", f"policy.model={model}", "policy.dtype=fp32", "rollout.backend=hf"]
        steps.append(Step(f"pool {b}", ["python", "-m", "rl.search", "job=pool", *chain, f"task.source={sets / 'pool.jsonl'}",
                                        "task.limit=null", "rollout.temperature=1.0", "rollout.max_new_tokens=120", "pool.n=4",
                                        "pool.exclude_offset=1000000", "pool.exclude_limit=1",
                                        f"trainer.out_dir={here / 'pool'}"], here / "pool" / "pool.jsonl", build=b))
        steps.append(Step(f"prm {b}", ["python", "-m", "prm.train", "prm=chain_tiny", f"prm.backbone={model}", "pool=jsonl",
                                       f"pool.path={here / 'pool' / 'pool.jsonl'}", "pool.limit=null", "judge=chain",
                                       "select.mode=all", "epochs=10", "run_eval=false", "prm.batch_size=32",
                                       f"trainer.out_dir={here / 'prm'}"], here / "prm" / "prm", build=b))
        seeds = "[" + ",".join(map(str, claim.seeds)) + "]"
        for setting in ("chain_prm_min", "chain_confidence"):
            extra = [f"task.source={sets / 'test.jsonl'}", "task.limit=null", f"policy.model={model}", f"seeds={seeds}",
                     "ns=[1,16]", "method.beam.ns=[16]", "method.dvts.ns=[16]", f"trainer.out_dir={here / setting}"]
            _, argv = command(setting, str(here / "prm" / "prm"), "hf", extra)
            steps.append(Step(f"{setting} {b}", argv, here / setting / "summary.md", build=b))
    return steps


def search_raw(claim: Claim, out: Path) -> list[dict]:
    """One row per (build x seed, arm, problem): pass, and the compute the result took where its record
    counts it (forward token positions of the policy's and the scorer's backbones, docs/search.md)."""
    from rl.search_report import FORWARD_FIELDS
    rows = []
    for b in claim.builds:
        for arm in claim.arms:
            setting, label, n = SEARCH_ARMS[arm]
            for path in sorted((out / f"build{b}" / setting / "records").glob("*.jsonl")):
                for line in path.read_text().splitlines():
                    rec = json.loads(line)
                    for r in rec["results"]:
                        if r["label"] == label and r["n"] == n:
                            rows.append({"unit": f"b{b}/s{rec['seed']}", "arm": arm, "problem": rec["question"],
                                         "value": int(bool(r["correct"]))})
                            cost = r.get("cost", {})
                            if all(k in cost for k in FORWARD_FIELDS):
                                rows[-1]["compute"] = {k: cost[k] for k in FORWARD_FIELDS}
    return rows


# ------------------------------------------------------------------ claim (b): online labels
ONLINE_ARMS = {"eq5": ["select.mode=uncertain"], "judge_all": ["select.mode=all"], "random": ["select.mode=random"],
               "outcome_only": ["algo.reward=outcome", "select.mode=none", "prm_update=none"]}


def online_dir(out: Path, build: int, seed: int, arm: str) -> Path:
    return out / f"build{build}" / f"seed{seed}" / arm


def online_steps(claim: Claim, out: Path) -> list[Step]:
    """Per build, seed and arm: the testbed's online run (configs/online_chain.yaml) training on the claim's
    train set (generator seed first + i for the i-th seed) and evaluated every round on its test set
    (policy_eval.source: every sample of every test problem, per problem in eval_problems.jsonl). A killed run
    resumes from its checkpoints (trainer.resume=auto)."""
    train = next(s for s in claim.problem_sets if s.role == "train")
    if len(claim.seeds) > train.generator_seeds[1] - train.generator_seeds[0]:
        raise ValueError(f"{claim.path}: {len(claim.seeds)} seeds but train set {train.name!r} has "
                         f"{train.generator_seeds[1] - train.generator_seeds[0]} generator seeds")
    steps = []
    for b in claim.builds:
        model = str(build_dir(b))
        for i, seed in enumerate(claim.seeds):
            for arm in claim.arms:
                here = online_dir(out, b, seed, arm)
                argv = ["python", "-m", "rl.online", "--config-name", "online_chain", f"policy.model={model}",
                        f"prm.backbone={model}", f"task.seed={train.generator_seeds[0] + i}",
                        f"task.size={train.per_seed}", f"trainer.seed={seed}", "policy_eval.every=1",
                        f"policy_eval.source={out / 'sets' / 'test.jsonl'}", "policy_eval.problems=100000", "policy_eval.holdout_share=0.0",
                        "policy_eval.greedy=false", *ONLINE_ARMS[arm], f"trainer.out_dir={here}"]
                steps.append(Step(f"online b{b} s{seed} {arm}", argv, here / "claim_step.done", mark=True))
    return steps


def online_raw(claim: Claim, out: Path) -> list[dict]:
    """The held-out pass of each test problem at each run's last evaluated round (its last row there)."""
    rows = []
    for b in claim.builds:
        for seed in claim.seeds:
            for arm in claim.arms:
                path = online_dir(out, b, seed, arm) / "eval_problems.jsonl"
                if not path.is_file():
                    continue
                evals = [json.loads(line) for line in path.read_text().splitlines()]
                last = max(r["round"] for r in evals)
                final = {r["question"]: r for r in evals if r["round"] == last}
                rows += [{"unit": f"b{b}/s{seed}", "arm": arm, "problem": q, "value": r["right"] / r["n"]}
                         for q, r in final.items()]
    return rows


# ------------------------------------------------------------------ claim (a): label efficiency
def label_steps(claim: Claim, out: Path) -> list[Step]:
    """Per pool: the policy's samples on it, the validation and the test set (bench_chain_pool --stage pool),
    then active / random at every budget and the full pool, every seed (--stage runs --per-problem)."""
    (b,) = claim.builds
    sets, steps = out / "sets", []
    for pool in (s for s in claim.problem_sets if s.role == "pool"):
        here = out / pool.name
        common = ["--out", str(here), "--model", str(build_dir(b))]
        steps.append(Step(f"{pool.name} samples", ["python", "-m", "bench.bench_chain_pool", "--stage", "pool", *common,
                                                   "--pool-set", str(sets / f"{pool.name}.jsonl"),
                                                   "--test-set", str(sets / "test.jsonl"),
                                                   "--tune-set", str(sets / "validation.jsonl")], here / "test.jsonl"))
        steps.append(Step(f"{pool.name} runs", ["python", "-m", "bench.bench_chain_pool", "--stage", "runs", *common,
                                                "--per-problem", "--budgets", *LABEL_BUDGETS,
                                                "--seeds", *map(str, claim.seeds)], here / "runs.done", mark=True))
    return steps


LABEL_BUDGETS = ["0.05", "0.1", "0.2", "0.3", "0.5"]


def label_raw(claim: Claim, out: Path) -> list[dict]:
    """active / random: {budget: F1 counts} per test problem (the area under F1 vs budget); full and the active
    PRM at 30 %: the F1 counts (first-error F1). Counts, not every sample's pair: the raw file stays small."""
    rows = []
    for pool in (s for s in claim.problem_sets if s.role == "pool"):
        path = out / pool.name / "runs.jsonl"
        runs = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        curves: dict = {}
        for r in runs:
            unit = f"{pool.name}/s{r['seed']}"
            for q, pairs in r["per_problem"].items():
                counts = f1_counts(pairs)
                if r["mode"] in ("active", "random"):
                    curves.setdefault((unit, r["mode"], q), {})[str(r["budget"])] = counts
                arm = "full" if r["mode"] == "full" else "active_at_30" if (r["mode"], r["budget"]) == ("active", 0.3) else None
                if arm:
                    rows.append({"unit": unit, "arm": arm, "problem": q, "metric": "first_error_f1", "value": counts})
        rows += [{"unit": u, "arm": arm, "problem": q, "value": v} for (u, arm, q), v in curves.items()]
    return rows


def label_units(claim: Claim, out: Path) -> list[dict]:
    """Per (pool x seed, active / random): F1 and pooled AUROC at each budget, and the smallest budget at which
    that PRM's F1 comes within 0.02 of the same PRM trained on every label of the pool (1.0: only there)."""
    rows = []
    for pool in (s for s in claim.problem_sets if s.role == "pool"):
        path = out / pool.name / "runs.jsonl"
        runs = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        full = {r["seed"]: r["f1"] for r in runs if r["mode"] == "full"}
        for seed in sorted(full):
            for mode in ("active", "random"):
                mine = sorted((r for r in runs if (r["mode"], r["seed"]) == (mode, seed)), key=lambda r: r["budget"])
                row = {"unit": f"{pool.name}/s{seed}", "arm": mode, "full_f1": full[seed],
                       "reaches_full_f1_at": next((r["budget"] for r in mine if r["f1"] >= full[seed] - 0.02), 1.0)}
                for r in mine:
                    row[f"f1@{r['budget']}"], row[f"auroc@{r['budget']}"] = r["f1"], r["auroc"]
                rows.append(row)
    return rows


# ------------------------------------------------------------------ claim (e): PRM quality vs cheaper scorers
QUALITY_LABELS = 1024   # the claim's label budget: judged pool trajectories each seed draws
QUALITY_TEST_N = 8      # samples per test problem: within-problem pairs, a raw file that stays small


def quality_steps(claim: Claim, out: Path) -> list[Step]:
    """Per build: the policy's judged samples on the pool, validation and test sets (bench_chain_pool --stage
    pool), then every arm on every seed's draw of <= QUALITY_LABELS of them (bench/claims/run_e.py)."""
    sets, steps = out / "sets", []
    for b in claim.builds:
        here, model = out / f"build{b}", str(build_dir(b))
        steps.append(Step(f"samples {b}", ["python", "-m", "bench.bench_chain_pool", "--stage", "pool", "--out", str(here),
                                           "--model", model, "--pool-set", str(sets / "pool.jsonl"), "--n", "4",
                                           "--test-set", str(sets / "test.jsonl"), "--test-n", str(QUALITY_TEST_N),
                                           "--tune-set", str(sets / "validation.jsonl")], here / "tune.jsonl"))
        steps.append(Step(f"scorers {b}", ["python", "-m", "bench.claims.run_e", "--out", str(here), "--model", model,
                                           "--labels", str(QUALITY_LABELS), "--seeds", *map(str, claim.seeds)],
                          here / "e_rows.jsonl"))
    return steps


def quality_raw(claim: Claim, out: Path) -> list[dict]:
    rows = []
    for b in claim.builds:
        path = out / f"build{b}" / "e_rows.jsonl"
        for r in map(json.loads, path.read_text().splitlines() if path.is_file() else []):
            if r["arm"] in claim.arms:
                if r.get("metric") == "first_error_f1":
                    r["value"] = f1_counts(r["value"])
                rows.append({"unit": f"b{b}/s{r.pop('seed')}", **r})
    return rows


def quality_units(claim: Claim, out: Path) -> list[dict]:
    """Per (build, seed, arm): the set-level figures that are not per-problem (pooled step AUROC, the AUROC on
    misconceived, slipped and x * 7 / x * 8 steps; bench_chain_pool.quality), reported beside the claim."""
    rows = []
    for b in claim.builds:
        path = out / f"build{b}" / "e_summary.jsonl"
        for r in map(json.loads, path.read_text().splitlines() if path.is_file() else []):
            if r["arm"] in claim.arms:
                rows.append({"unit": f"b{b}/s{r.pop('seed')}", **{k: v for k, v in r.items() if k != "seconds"}})
    return rows


@dataclass(frozen=True)
class Runner:
    steps: Callable[[Claim, Path], list[Step]]        # the arms' commands
    raw: Callable[[Claim, Path], list[dict]]          # their records -> the claim's raw rows
    builds: Callable[[Claim, Path], list[Step]] = lambda claim, out: build_steps(claim)
    sets: Callable[[Claim], dict] = claim_problem_sets
    independent: bool = False                         # no step reads another's output: --jobs may run them together
    units: Callable[[Claim, Path], list[dict]] | None = None   # set-level figures per (unit, arm), beside the raw rows


TESTBED = Runner(run_c.testbed_steps, run_c.testbed_raw, run_c.build_steps, run_c.draw_sets, independent=True)
RUNNERS = {"d": Runner(search_steps, search_raw), "b": Runner(online_steps, online_raw, independent=True),
           "a": Runner(label_steps, label_raw, units=label_units),
           "e": Runner(quality_steps, quality_raw, units=quality_units), "c_sparse": TESTBED,
           "c_lucky": TESTBED}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("claim", help="a claim file stem (d_search) or id (d)")
    ap.add_argument("--out", type=Path, help="working dir (default outputs/claims/<id>)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--jobs", type=int, default=1, help="arm commands run at a time (claims whose runs are independent)")
    ap.add_argument("--collect", action="store_true",
                    help="run nothing: write the raw rows and the table of the runs finished so far (a claim whose "
                         "units have not all run reads as incomplete)")
    ap.add_argument("--seeds", type=int, nargs="+", help="run only these of the claim's seeds (per-seed steps)")
    ap.add_argument("--builds", type=int, nargs="+", help="run only these of the claim's policy builds (claim d)")
    args = ap.parse_args(argv)
    claim = load_claim(claim_path(args.claim))
    if claim.id not in RUNNERS:
        raise SystemExit(f"claim ({claim.id}) is pre-registered but has no runner (have: {', '.join(RUNNERS)})")
    runner = RUNNERS[claim.id]
    if args.jobs > 1 and not runner.independent:
        raise SystemExit(f"claim ({claim.id}): its steps read each other's outputs; run it with --jobs 1")
    out = args.out or ROOT / "outputs" / "claims" / claim.id
    out.mkdir(parents=True, exist_ok=True)
    summary = drawn_sets(claim, out, runner.sets)
    print("[claims] sets: " + ", ".join(f"{k} {v['problems']} problems ({v['dropped']} dropped)" for k, v in summary.items()))
    if not args.collect:
        for step in runner.builds(claim, out):
            if args.builds and step.build is not None and step.build not in args.builds:
                continue
            run_step(step, args.dry_run)
        steps = runner.steps(claim, out)
        if args.seeds:
            steps = [s for s in steps if s.seed in set(args.seeds)]
        if args.builds:
            steps = [s for s in steps if s.build in set(args.builds)]
        run_steps(steps, args.dry_run, args.jobs)
    if args.dry_run:
        return
    rows = runner.raw(claim, out)
    raw = ROOT / claim.raw
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"[claims] {len(rows)} raw rows -> {claim.raw}")
    from bench.claims.report import report, unit_path
    if runner.units:
        units = runner.units(claim, out)
        unit_path(claim).write_text("".join(json.dumps(r) + "\n" for r in units))
    print(report(claim.id))


if __name__ == "__main__":
    main()
