"""The policy's pass rate on a fixed held-out problem set (setting group `policy_eval`), veRL's validation step.

A round's own `pass_rate` is measured on that round's training prompts: it moves with which problems the
stream drew (3- or 8-operation chains) as much as with the policy, so a learning curve read from it needs
many rounds to average out. The held-out set is the same problems at every evaluation, sampled from the
same seeds, so two evaluations differ only by the policy:

    eval/pass         share of policy_eval.n samples per problem (rollout temperature) that verify
    eval/pass_greedy  share of problems greedy decoding solves (policy_eval.greedy)
    eval/trace_error  share of the sampled solutions that verify and contain a wrong step, by the task's own
                      exact step rule (chain tasks; absent for tasks without one)

Evaluated before the first round (`round` 0: the initial policy; `policy_eval.before_train=false` skips it, e.g.
for arms of one comparison that all start from the same policy) and after every `policy_eval.every`-th round and
the last one. The problems: the task's generator with seed task.seed + EVAL_SEED_OFFSET (generated tasks)
or split `policy_eval.split` (datasets), minus any question the training problems contain. Ranks evaluate a
strided share and sum their counts.

Never trained on: another generator seed is not enough where the task has few distinct questions (the
default arithmetic task has 154, and its 2,000 training problems contain every one). So a generated task's
questions are partitioned by a hash of their text: the share `policy_eval.holdout_share` is held out, removed
from the training problems, and the policy's evaluation and the PRM's held-out judged set (rl.online)
draw only from it. The partition is the same on every machine and in every run.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

from core.distributed import hash_seed

EVAL_SEED_OFFSET = 20_011   # another seed than the training problems' and the PRM held-out set's (10_007)
GENERATED = ("arithmetic", "chain")   # tasks drawn from a generator (datasets have their own test split)


def held_out(question: str, share: float) -> bool:
    """Whether `question` is in the held-out partition (a fixed `share` of all questions, by hash)."""
    digest = hashlib.sha256(f"prmloop-heldout:{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2 ** 64


def partitioned(cfg) -> bool:
    """Whether this run holds a partition out: a generated task, and something evaluated on it."""
    heldout_prm = cfg.replay.enabled and cfg.replay.heldout_size > 0
    return cfg.task.name in GENERATED and cfg.policy_eval.holdout_share > 0 and (cfg.policy_eval.every > 0 or heldout_prm)


def training_problems(cfg, problems: list) -> list:
    """The problems the run may train on: the task's, minus the held-out partition where there is one."""
    if not partitioned(cfg):
        return problems
    kept = [p for p in problems if not held_out(p.question, cfg.policy_eval.holdout_share)]
    if not kept:
        raise ValueError(f"policy_eval.holdout_share={cfg.policy_eval.holdout_share} holds out every question of task "
                         f"{cfg.task.name!r}; lower it")
    return kept


def fresh(cfg, problems: list, train_problems: list) -> list:
    """`problems` never trained on: not a training question, in the held-out partition where there is one,
    each question once."""
    seen, out = {p.question for p in train_problems}, []
    for p in problems:
        if p.question in seen or (partitioned(cfg) and not held_out(p.question, cfg.policy_eval.holdout_share)):
            continue
        seen.add(p.question)
        out.append(p)
    return out


def eval_problems(cfg, train_problems) -> list:
    """The held-out problems of `cfg` (an OnlineConfig), disjoint from `train_problems`; `policy_eval.source`: that
    fixed problem set (checked: one of its questions among the training problems fails, naming it)."""
    from tasks.registry import make_task

    if cfg.policy_eval.source:
        problems = make_task(replace(cfg.task, source=cfg.policy_eval.source, limit=None), cfg.data_root).problems
        seen = {p.question for p in train_problems}
        for i, p in enumerate(problems, 1):
            if p.question in seen:
                raise ValueError(f"{cfg.policy_eval.source}, line {i}: question {p.question!r} is also a training problem "
                                 f"(task {cfg.task.name!r}, seed {cfg.task.seed}): not held out")
        return problems[:cfg.policy_eval.problems]
    size = max(cfg.task.size, 2 * int(cfg.policy_eval.problems / cfg.policy_eval.holdout_share)) if partitioned(cfg) else cfg.task.size
    task = replace(cfg.task, seed=cfg.task.seed + EVAL_SEED_OFFSET, split=cfg.policy_eval.split, limit=None, size=size)
    problems = fresh(cfg, make_task(task, cfg.data_root).problems, train_problems)
    if not problems:
        raise ValueError(f"policy_eval.every={cfg.policy_eval.every}: task {cfg.task.name!r} has no problems outside "
                         f"the training set (split {cfg.policy_eval.split!r}); set policy_eval.every=0 or a task with "
                         f"more distinct problems")
    return problems[:cfg.policy_eval.problems]


def evaluate_policy(loop, problems: list, per_problem: list | None = None) -> dict:
    """Pass rates of the current policy on `problems`. Seeds depend on (run seed, problem) only, so every
    evaluation, and every arm of a comparison with the same trainer.seed, draws from the same generators.
    `per_problem` (a list) receives one row per problem, every rank's: question, right, n, greedy_right and,
    on tasks with an exact step rule, passed_wrong_step (of the `right` samples, those with a wrong step: the
    problem's share behind eval/trace_error), the raw results a claim's intervals over problems need."""
    cfg, r = loop.cfg, loop.cfg.rollout
    mine = list(range(loop.ranks.rank, len(problems), loop.ranks.world))
    chosen = [problems[i] for i in mine]
    prompts = [loop.task.prompt(loop.tok, p.question) for p in chosen]
    stop = list(r.stop) or None
    seeds = [hash_seed(cfg.trainer.seed, EVAL_SEED_OFFSET, i) for i in mine]
    sampled = loop.rollout.generate(prompts, cfg.policy_eval.n, r.max_new_tokens, r.temperature, r.top_p, stop,
                                    seeds=seeds)
    greedy = (loop.rollout.generate(prompts, 1, r.max_new_tokens, 0.0, 1.0, stop) if cfg.policy_eval.greedy
              else [[] for _ in prompts])
    loop.rollout.sleep()
    from rl.loop import attempt_steps

    refs, texts, kinds, tokens, wrong = [], [], [], [], []
    for p, group, best in zip(chosen, sampled, greedy):
        for c in group + best:
            refs.append(p.reference_answer)
            texts.append(c.text)
            tokens.append(len(c.token_ids))
            wrong.append(loop.task.has_wrong_step(p.question, attempt_steps(c.text)))
        kinds += ["sampled"] * len(group) + ["greedy"] * len(best)
    verdicts = loop.checker.verify_solutions(refs, texts, cfg.task.fallback_last_number) if texts else []
    counts = {k: [sum(v == "correct" for v, kk in zip(verdicts, kinds) if kk == k), kinds.count(k),
                  sum(t for t, kk in zip(tokens, kinds) if kk == k),
                  sum(bool(w) for v, kk, w in zip(verdicts, kinds, wrong) if kk == k and v == "correct")]
              for k in ("sampled", "greedy")}
    rows, at = [], 0
    for p, group, best in zip(chosen, sampled, greedy):
        size = len(group) + len(best)
        mine = verdicts[at:at + size]
        passed = [v == "correct" for v in mine[:len(group)]]
        row = {"question": p.question, "right": sum(passed), "n": len(group),
               "greedy_right": sum(v == "correct" for v in mine[len(group):])}
        if loop.task.first_error is not None:
            row["passed_wrong_step"] = sum(ok and bool(w) for ok, w in zip(passed, wrong[at:at + len(group)]))
        rows.append(row)
        at += size
    if per_problem is not None:
        per_problem.extend(row for part in loop.ranks.gather(rows) for row in part)
    totals = loop.ranks.gather(counts)
    right, total, length, lucky = ({k: sum(part[k][j] for part in totals) for k in counts} for j in range(4))
    out = {"eval/pass": right["sampled"] / max(total["sampled"], 1), "eval/problems": len(problems),
           "eval/samples": total["sampled"], "eval/tokens": length["sampled"] / max(total["sampled"], 1),
           "eval/policy_version": loop.policy.version}
    if loop.task.first_error is not None:
        out["eval/trace_error"] = lucky["sampled"] / right["sampled"] if right["sampled"] else float("nan")
    if cfg.policy_eval.greedy:
        out["eval/pass_greedy"] = right["greedy"] / max(total["greedy"], 1)
    return out


def due(cfg, index: int) -> bool:
    """Whether the policy is evaluated after round `index` (0: before the first round)."""
    every = cfg.policy_eval.every
    return every > 0 and (index == 0 or index % every == 0 or index == cfg.rounds)
