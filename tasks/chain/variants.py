"""Solutions of the chain testbed tasks where the outcome alone is not enough (docs/method.md, Testbed tasks).

The problems are the chain generator's (tasks.chain.problems); what differs is the policy's mistakes, which
its SFT data teaches it (tasks.chain.policy, the specs of each task):

- `chain_sparse`: 12-20 operations; one slip anywhere sinks the answer, so few samples pass and most groups
  carry no outcome signal.
- `chain_lucky`: *compensating errors*: a slip (a dropped or extra carry) followed by a later step that writes
  the value the chain would have had, so the answer is right and two equations are false. Outcome-only reward
  pays for them; the trace error (share of passed solutions with a wrong step) measures how often.
- `chain_context`: a *lingering carry*: right after a step that carried (a + b past a ten) or borrowed (a - b
  below one), the next + or - step carries again (+1 / -1). The trigger is the previous step, not a token of
  the step itself, and SFT at a high rate makes the policy sure of it: neither a token cue nor the policy's
  confidence points at it.
Later steps always continue from the written value, so the chain judge's first error is the first false equation.
"""
from __future__ import annotations

import random

from tasks.chain.labels import ANSWER, first_error
from tasks.chain.problems import ChainStep, parse_question, sample_solution, wrong_result
from tasks.problems import Trajectory


def carries(step: ChainStep) -> bool:
    """A + that passes a ten in the units, or a - that borrows: the context that triggers a lingering carry."""
    if step.op == "+":
        return step.a % 10 + step.b % 10 >= 10
    if step.op == "-":
        return step.a % 10 < step.b % 10
    return False


def _written(value: int, op: str, b: int) -> ChainStep:
    """The step from `value`; an operation that an earlier slip made impossible (inexact /) falls back to +."""
    step = ChainStep(value, op, b)
    if op == "/" and (b == 0 or value % b):
        step = ChainStep(value, "+", b)
    return step


def lucky_steps(question: str, slip_at: int, fix_at: int, rng: random.Random, value_max: int = 99) -> list[str]:
    """Steps with a slip at `slip_at` and, at `fix_at` > slip_at, a step that writes the true chain value
    (with + and - alone: the opposite carry slip), so the answer is right. A step in between whose result
    would leave 0..value_max compensates instead (every written value stays a chain value)."""
    if not 0 <= slip_at < fix_at:
        raise ValueError(f"need 0 <= slip_at < fix_at, got {slip_at}, {fix_at}")
    start, ops = parse_question(question)
    true = value = start
    steps = []
    for k, (op, b) in enumerate(ops):
        step = _written(value, op, b)
        true = _written(true, op, b).value
        fixes = k == fix_at or (slip_at < k < fix_at and not 0 <= step.value <= value_max)
        result = wrong_result(rng, step, value_max) if k == slip_at else true if fixes else step.value
        fix_at = k if fixes else fix_at
        steps.append(step.text(result))
        value = result
    return steps + [ANSWER.format(value)]


def lucky_solution(rng: random.Random, question: str, error_rate: float, lucky_rate: float,
                   value_max: int = 99) -> Trajectory:
    """With probability `lucky_rate` (chains of 2+ operations) a compensated slip at uniform steps, else the
    chain's usual solution with a slip at `error_rate`."""
    ops = parse_question(question)[1]
    if len(ops) >= 2 and rng.random() < lucky_rate:
        slip_at = rng.randrange(len(ops) - 1)
        steps = lucky_steps(question, slip_at, rng.randrange(slip_at + 1, len(ops)), rng, value_max)
        return Trajectory(question, steps, first_error(*parse_question(question), steps)[0], source="chain_lucky")
    return sample_solution(rng, question, error_rate, value_max)


def context_steps(question: str, rng: random.Random, context_rate: float, error_at: int | None = None,
                  value_max: int = 99) -> list[str]:
    """Steps in which every + / - step right after a carrying step (as written) carries again with
    probability `context_rate`; `error_at`: one ordinary slip there as well."""
    value, ops = parse_question(question)
    steps, previous = [], None
    for k, (op, b) in enumerate(ops):
        step = _written(value, op, b)
        result = wrong_result(rng, step, value_max) if k == error_at else step.value
        if k != error_at and previous is not None and carries(previous) and op in "+-" \
                and rng.random() < context_rate:
            result += 1 if op == "+" else -1
        steps.append(step.text(result))
        previous, value = ChainStep(step.a, step.op, step.b), result
    return steps + [ANSWER.format(value)]


def context_solution(rng: random.Random, question: str, error_rate: float, context_rate: float,
                     value_max: int = 99) -> Trajectory:
    """A solution with the lingering carry at `context_rate` and a slip at a uniform step at `error_rate`."""
    n_ops = len(parse_question(question)[1])
    error_at = rng.randrange(n_ops) if rng.random() < error_rate else None
    steps = context_steps(question, rng, context_rate, error_at, value_max)
    return Trajectory(question, steps, first_error(*parse_question(question), steps)[0], source="chain_context")
