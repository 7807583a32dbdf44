"""Claim (b) (bench/claims/b_online_labels.md): online label selections, each an rl.online run per build,
seed and arm on the claim's train set, evaluated every round on its test set.

    python -m bench.claims.run b_online_labels [--jobs 4] [--dry-run]

Raw rows, unit b<build>/s<seed>, one per (unit, arm, problem): the problem's held-out pass at the run's last
round. Beside them, per finished run (online_units): the labels its ledger holds as paid, its ledger hits and
its held-out pass.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.claims.spec import Claim
from bench.claims.steps import Step, build_dir

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
                steps.append(Step(f"online b{b} s{seed} {arm}", argv, here / "claim_step.done", mark=True,
                                  seed=seed, build=b, policy=build_dir(b)))
    return steps


def online_raw(claim: Claim, out: Path) -> list[dict]:
    """The held-out pass of each test problem at each finished run's last round (its last row there); a run
    still going (or killed) gives none, so the report counts its unit as not yet run."""
    rows = []
    for b in claim.builds:
        for seed in claim.seeds:
            for arm in claim.arms:
                path = online_dir(out, b, seed, arm) / "eval_problems.jsonl"
                if not (path.is_file() and (path.parent / "claim_step.done").is_file()):
                    continue
                evals = [json.loads(line) for line in path.read_text().splitlines()]
                last = max(r["round"] for r in evals)
                final = {r["question"]: r for r in evals if r["round"] == last}
                rows += [{"unit": f"b{b}/s{seed}", "arm": arm, "problem": q, "value": r["right"] / r["n"]}
                         for q, r in final.items()]
    return rows


def online_units(claim: Claim, out: Path) -> list[dict]:
    """Per finished run: the labels its ledger holds as paid (exact over kills and resumes: a resumed round
    reads what it paid before it was killed from the ledger), its ledger hits over every round (a round logged
    twice, by a run resumed after it, counts once: its later row), and its held-out pass at the last round."""
    from judges.ledger import LabelLedger
    rows = []
    for b in claim.builds:
        for seed in claim.seeds:
            for arm in claim.arms:
                here = online_dir(out, b, seed, arm)
                if not (here / "claim_step.done").is_file():
                    continue
                by_round = {m["round"]: m for m in map(json.loads, (here / "metrics.jsonl").read_text().splitlines())}
                paid = 0
                if (here / "ledger.sqlite").is_file():
                    with LabelLedger(here / "ledger.sqlite") as ledger:
                        paid = sum(int(s["labels"]) for s in ledger.stats().values())
                rows.append({"unit": f"b{b}/s{seed}", "arm": arm, "judge_paid": paid,
                             "ledger_hits": sum(m.get("judge/ledger_hits", 0) for m in by_round.values()),
                             "held_out_pass": by_round[max(by_round)]["eval/pass"]})
    return rows
