"""Claim (c), stage 1 (bench/claims/c_sparse.md, c_lucky.md): outcome only vs the judge's first-error labels as
step rewards under each credit form, on a testbed task, scored on the claim's own fresh test set.

    python -m bench.claims.run c_sparse [--jobs 4] [--dry-run]
    python -m bench.claims.run c_lucky  [--jobs 4] [--dry-run]

A claim file names no task: TESTBED maps each claim to its task (configs/task/<task>.yaml) and testbed policy
(tasks.chain.policy.TESTBED_SPECS). Its sets are drawn with that task's ChainSpec and the test set is checked
against that policy's own SFT questions (problem_sets.claim_problem_sets). Per seed i and arm: one rl.online run
on the task (configs/online_chain.yaml, ROUNDS rounds), training on the claim's train set (generator seed
first + i) and evaluated (EXTRAS: every 20 rounds, or at round 40 alone) on every problem of its test set
(4 samples at temperature 1), per problem in eval_problems.jsonl; the arm's overrides are bench_chain_online.ARMS'. A killed run resumes from its
checkpoint (trainer.resume=auto); a finished one is skipped.

Raw rows, unit b<build>/s<seed>, one per (unit, arm, problem):
    c_sparse  the problem's held-out pass (right / n), averaged over the evaluations after round 0
    c_lucky   the problem's correct-steps share of its passed samples at round ROUNDS,
              1 - passed_wrong_step / right. A problem no sample passed has no share: it has no row for that
              unit and arm, so a comparison reads the problems both arms passed at least once. Beside it, rows
              tagged metric: held_out_pass hold the problem's held-out pass at round ROUNDS, which the secondary
              comparison (sum_pass_no_loss) reads.
A run whose evaluations stop before round ROUNDS gives no rows: the report counts its unit as not yet run.
A round evaluated twice (a run killed after an evaluation and before its checkpoint evaluates it again when it
resumes) counts once, the later rows.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from bench.claims.spec import ROOT, Claim, Role
from bench.claims.steps import Step

TESTBED = {"c_sparse": ("chain_sparse", "chain-tiny-sparse"), "c_lucky": ("chain_lucky", "chain-tiny-lucky")}
ROUNDS = 40
# Per task: what its metric reads and what its solutions need. c_sparse averages the evaluations at rounds
# 20 and 40; c_lucky reads round 40 alone (evaluating the whole test set at the rounds between would cost
# more than the training). A 20-operation solution is ~3x chain's 100 tokens, hence sparse's room.
EXTRAS = {"c_sparse": ["policy_eval.every=20", "prm.max_length=512", "rollout.max_new_tokens=240"],
          "c_lucky": [f"policy_eval.every={ROUNDS}"]}
SETTINGS = [f"rounds={ROUNDS}", "policy_eval.n=4", "policy_eval.greedy=false",
            "policy_eval.problems=100000", "trainer.resume=auto", "trainer.progress=false", "plot=false",
            "keep_checkpoints=1"]


def task_spec(claim: Claim):
    """The ChainSpec of the claim's task, as its config (configs/task/<task>.yaml) sets it."""
    from tasks.chain.problems import ChainSpec
    task = yaml.safe_load((ROOT / "configs" / "task" / f"{TESTBED[claim.id][0]}.yaml").read_text())
    return ChainSpec(task["min_ops"], task["max_ops"], task["operand_max"], task["value_max"], task["ops"])


def model_spec(claim: Claim) -> type:
    """The ChainModelSpec class of the claim's testbed policy."""
    from tasks.chain.policy import TESTBED_SPECS
    return TESTBED_SPECS[TESTBED[claim.id][1]]


def draw_sets(claim: Claim) -> dict:
    from bench.claims.problem_sets import claim_problem_sets
    return claim_problem_sets(claim, chain_spec=task_spec(claim), build_spec=model_spec(claim))


def build_steps(claim: Claim, out: Path) -> list[Step]:
    """The testbed policy, built once and cached (core.models: pinned like every build); seed 0 only, the one
    build its builder makes and the one every claim (c) names. Marked done in the claim's own directory, not
    by the cache's files: a cached build of an older recipe is rebuilt here, before any run, rather than by
    each of the runs that --jobs starts side by side."""
    if claim.builds != [0]:
        raise ValueError(f"{claim.path}: builds {claim.builds}: the testbed policies are built at seed 0 only")
    name = TESTBED[claim.id][1]
    return [Step(f"build {name}", ["python", "-m", "core.models", name], out / f"{name}.built", mark=True)]


def run_dir(out: Path, build: int, seed: int, arm: str) -> Path:
    return out / f"build{build}" / f"seed{seed}" / arm


def testbed_steps(claim: Claim, out: Path) -> list[Step]:
    from bench.bench_chain_online import ARMS
    task, model = TESTBED[claim.id]
    train = next(s for s in claim.problem_sets if s.role == Role.train)
    first, last = train.generator_seeds
    if len(claim.seeds) > last - first:
        raise ValueError(f"{claim.path}: {len(claim.seeds)} seeds but train set {train.name!r} has {last - first} "
                         f"generator seeds")
    steps = []
    for b in claim.builds:
        for i, seed in enumerate(claim.seeds):
            for arm in claim.arms:
                here = run_dir(out, b, seed, arm)
                argv = ["python", "-m", "rl.online", "--config-name", "online_chain", f"task={task}",
                        f"policy.model={model}", f"prm.backbone={model}", f"trainer.seed={seed}",
                        f"task.seed={first + i}", f"task.size={train.per_seed}",
                        f"policy_eval.source={out / 'sets' / 'test.jsonl'}", *SETTINGS, *EXTRAS[claim.id],
                        *ARMS[arm],
                        f"trainer.out_dir={here}"]
                steps.append(Step(f"{claim.id} b{b} s{seed} {arm}", argv, here / "claim_step.done", mark=True,
                                  log=here / "run.log", seed=seed))
    return steps


def evaluations(path: Path) -> dict[int, dict[str, dict]]:
    """round -> question -> its row of eval_problems.jsonl (a round written twice: the later rows)."""
    out: dict[int, dict[str, dict]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["round"], {})[row["question"]] = row
    return out


def mean_pass(evals: dict[int, dict[str, dict]]) -> dict[str, float]:
    """question -> its held-out pass averaged over the evaluations after round 0 (those up to ROUNDS)."""
    rounds = [evals[r] for r in sorted(evals) if 0 < r <= ROUNDS]
    questions = set.intersection(*(set(e) for e in rounds)) if rounds else set()
    return {q: sum(e[q]["right"] / e[q]["n"] for e in rounds) / len(rounds) for q in sorted(questions)}


def correct_steps_share(evals: dict[int, dict[str, dict]]) -> dict[str, float]:
    """question -> 1 - passed_wrong_step / right at round ROUNDS; no entry where no sample passed."""
    return {q: 1 - r["passed_wrong_step"] / r["right"] for q, r in evals[ROUNDS].items() if r["right"]}


def testbed_raw(claim: Claim, out: Path) -> list[dict]:
    rows = []
    for b in claim.builds:
        for seed in claim.seeds:
            for arm in claim.arms:
                path = run_dir(out, b, seed, arm) / "eval_problems.jsonl"
                evals = evaluations(path) if path.is_file() else {}
                if ROUNDS not in evals:
                    continue
                unit = f"b{b}/s{seed}"
                values = mean_pass(evals) if claim.id == "c_sparse" else correct_steps_share(evals)
                rows += [{"unit": unit, "arm": arm, "problem": q, "value": v} for q, v in values.items()]
                if claim.id == "c_lucky":
                    rows += [{"unit": unit, "arm": arm, "problem": q, "metric": "held_out_pass",
                              "value": r["right"] / r["n"]} for q, r in evals[ROUNDS].items()]
    return rows
