"""The process reward source of a round (docs/method.md, Advantages and Credit forms): which dense reward
the policy's process advantages come from, placed at which tokens, under which credit form.

    prm       the PRM's step scores, each at its step's last token (the method)
    orm       the same ensemble trained as an outcome reward model (rl/loop.py, update_prm): its score of each
              step prefix, i.e. the chance that the solution ends right, at the step's last token
    judge     the judge's labels of the same samples: 1 before the first wrong step, 0 from it on (an upper bound)
    implicit  PRIME's implicit process reward beta * log(pi_phi / pi_ref) at every completion token, computed
              before the implicit PRM learns from this round's outcomes (PRIME's order)
"""
from __future__ import annotations

import torch

from rl.algos import step_end_tokens
from rl.config import ProcessSource
from rl.credit import credit_values


def judged_step_values(r) -> list[float]:
    """The judge's verdict as step rewards (algo.process_source=judge): 1 before the first wrong step,
    0 from it on; nothing for a sample without a valid label."""
    if r.first_error is None:
        return []
    return [1.0 if r.first_error == -1 or k < r.first_error else 0.0 for k in range(len(r.steps))]


def step_values(loop, rollouts) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Step rewards of the PRM / ORM (its scores) or the judge, at the steps' last tokens."""
    values, positions = [], []
    for r in rollouts:
        ends = step_end_tokens(loop.tok, r.completion.token_ids, r.completion.text, r.steps)
        rewards = judged_step_values(r) if loop.cfg.algo.process_source == ProcessSource.judge else r.mean
        k = min(len(ends), len(rewards))  # the PRM may have truncated a long trajectory
        values.append(torch.tensor(rewards[:k], dtype=torch.float32))
        positions.append(ends[:k])
    return values, positions


def implicit_values(loop, rollouts) -> tuple[list[torch.Tensor], list[list[int]], dict]:
    """PRIME: the token rewards of the implicit PRM as it is, then its cross-entropy update on the round's
    verified outcomes (the same 0/1 the outcome source uses)."""
    prompts = [loop.tok(r.prompt, add_special_tokens=False)["input_ids"] for r in rollouts]
    completions = [list(r.completion.token_ids) for r in rollouts]
    values = loop.implicit.token_rewards(prompts, completions)
    metrics = loop.implicit.update(prompts, completions, [float(r.passed) for r in rollouts])
    return values, [list(range(len(c))) for c in completions], {f"implicit/{k}": v for k, v in metrics.items()}


def process_source(loop, rollouts) -> tuple[tuple[list[torch.Tensor], list[list[int]]] | None, dict]:
    """(values, positions) of the process source under algo.process_credit, and its metrics; None when the
    run has no such source (no PRM to score with)."""
    a = loop.cfg.algo
    metrics = {}
    if a.process_source == ProcessSource.implicit:
        values, positions, metrics = implicit_values(loop, rollouts)
    elif loop.learner is None and a.process_source != ProcessSource.judge:
        return None, metrics
    else:
        values, positions = step_values(loop, rollouts)
    return (credit_values(values, a.process_credit, a.min_temperature, loop.cfg.prm.threshold), positions), metrics
