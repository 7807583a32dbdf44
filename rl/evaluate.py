"""The policy's pass rate on a fixed held-out problem set (setting group `eval`), veRL's validation step.

A round's own `pass_rate` is measured on that round's training prompts: it moves with which problems the
stream drew (3- or 8-operation chains) as much as with the policy, so a learning curve read from it needs
many rounds to average out. The held-out set is the same problems at every evaluation, sampled from the
same seeds, so two evaluations differ only by the policy:

    eval/pass         share of eval.n samples per problem (rollout temperature) that verify
    eval/pass_greedy  share of problems greedy decoding solves (eval.greedy)
    eval/trace_error  share of the sampled solutions that verify and contain a wrong step, by the task's own
                      exact step rule (chain tasks; absent for tasks without one)

Evaluated before the first round (`round` 0: the initial policy) and after every `eval.every`-th round and
the last one. The problems: the task's generator with seed task.seed + EVAL_SEED_OFFSET (generated tasks)
or split `eval.split` (datasets), minus any question the training problems contain. Ranks evaluate a
strided share and sum their counts.
"""
from __future__ import annotations

from dataclasses import replace

from core.distributed import hash_seed

EVAL_SEED_OFFSET = 20_011   # another seed than the training problems' and the PRM held-out set's (10_007)


def eval_problems(cfg, train_problems) -> list:
    """The held-out problems of `cfg` (an OnlineConfig), disjoint from `train_problems`."""
    from tasks.registry import make_task

    task = replace(cfg.task, seed=cfg.task.seed + EVAL_SEED_OFFSET, split=cfg.eval.split, limit=None)
    seen = {p.question for p in train_problems}
    problems = [p for p in make_task(task, cfg.data_root).problems if p.question not in seen]
    if not problems:
        raise ValueError(f"eval.every={cfg.eval.every}: task {cfg.task.name!r} has no problems outside the training set "
                         f"(split {cfg.eval.split!r}); set eval.every=0 or a task with more distinct problems")
    return problems[:cfg.eval.problems]


def evaluate_policy(loop, problems: list) -> dict:
    """Pass rates of the current policy on `problems`. Seeds depend on (run seed, problem) only, so every
    evaluation, and every arm of a comparison with the same trainer.seed, draws from the same generators."""
    cfg, r = loop.cfg, loop.cfg.rollout
    mine = list(range(loop.ranks.rank, len(problems), loop.ranks.world))
    chosen = [problems[i] for i in mine]
    prompts = [loop.task.prompt(loop.tok, p.question) for p in chosen]
    stop = list(r.stop) or None
    seeds = [hash_seed(cfg.trainer.seed, EVAL_SEED_OFFSET, i) for i in mine]
    sampled = loop.rollout.generate(prompts, cfg.eval.n, r.max_new_tokens, r.temperature, r.top_p, stop, seeds=seeds)
    greedy = (loop.rollout.generate(prompts, 1, r.max_new_tokens, 0.0, 1.0, stop) if cfg.eval.greedy
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
    totals = loop.ranks.gather(counts)
    right, total, length, lucky = ({k: sum(part[k][j] for part in totals) for k in counts} for j in range(4))
    out = {"eval/pass": right["sampled"] / max(total["sampled"], 1), "eval/problems": len(problems),
           "eval/samples": total["sampled"], "eval/tokens": length["sampled"] / max(total["sampled"], 1),
           "eval/policy_version": loop.policy.version}
    if loop.task.first_error is not None:
        out["eval/trace_error"] = lucky["sampled"] / right["sampled"] if right["sampled"] else float("nan")
    if cfg.eval.greedy:
        out["eval/pass_greedy"] = right["greedy"] / max(total["greedy"], 1)
    return out


def due(cfg, index: int) -> bool:
    """Whether the policy is evaluated after round `index` (0: before the first round)."""
    every = cfg.eval.every
    return every > 0 and (index == 0 or index % every == 0 or index == cfg.rounds)
