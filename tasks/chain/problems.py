"""The `chain` task family: multi-step arithmetic chains with exact first-error labels.

A problem reads "What is ((7 + 5) * 3) - 4?": a start value and 3-8 operations applied left to right
(parentheses make the order explicit). Its reference solution writes one checkable equation per
blank-line step and ends with the answer line:

    7 + 5 = 12

    12 * 3 = 36

    36 - 4 = 32

    The answer is 32.

`inject_error` writes a systematic slip into one step (a dropped carry, a neighbouring times-table
entry, an off-by-one) and continues the chain from the wrong value, as a model that believes its slip
would; the chain judge (judges/chain.py; and the rule judge, which only checks the equations) then
finds exactly that step as the first error. Solutions with
injected errors are the SFT data that give the tiny testbed policy (tasks.chain.policy) realistic mistakes.

Two kinds, because they test different things:
- *slips* (`error_rate`): one random step per solution goes wrong. The policy learns that any step may
  slip, so a slip is a token it finds unlikely: its own confidence (prm.confidence) catches them free.
- a *misconception* (`misconception_rate`): whenever a step multiplies by 7 or 8, the solution uses the
  times-table row below (x * 7 = x * 6, x * 8 = x * 7) with this probability. The policy learns the wrong
  fact with confidence, so its likelihood ranks those errors as its *surest* steps; only labels can teach
  a PRM that they are wrong, and only rewards can teach the policy.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from tasks.chain.labels import ANSWER, first_error, parse_chain
from tasks.chain.labels import apply as exact_apply
from tasks.problems import Problem
from tasks.problems import Trajectory

CHAIN_SYSTEM_PROMPT = None  # the tiny policy is trained without one: the chat template's user turn is all


@dataclass
class ChainSpec:
    min_ops: int = 3          # operations per problem, drawn uniformly from min_ops..max_ops
    max_ops: int = 8
    operand_max: int = 9      # operands are drawn from 1..operand_max
    value_max: int = 99       # every intermediate value stays in 0..value_max
    ops: str = "+-*"          # allowed operators (any of + - * /; division only when exact)

    def __post_init__(self):
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"chain: need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if self.operand_max < 2 or self.value_max < self.operand_max:
            raise ValueError(f"chain: need 2 <= operand_max <= value_max, got {self.operand_max}, {self.value_max}")
        if not self.ops or set(self.ops) - set("+-*/"):
            raise ValueError(f"chain: ops must be a non-empty subset of '+-*/', got {self.ops!r}")


@dataclass
class ChainStep:
    a: int
    op: str
    b: int

    @property
    def value(self) -> int:
        return apply(self.a, self.op, self.b)

    def text(self, result: int | None = None) -> str:
        return f"{self.a} {self.op} {self.b} = {self.value if result is None else result}"


def apply(a: int, op: str, b: int) -> int:
    """The judge's arithmetic (judges.chain.apply); a division that is not exact is a generator bug."""
    value = exact_apply(a, op, b)
    if value is None:
        raise ValueError(f"{a} / {b} is not exact")
    return value


def _operand(rng: random.Random, value: int, op: str, spec: ChainSpec) -> int | None:
    """An operand that keeps the result in 0..value_max, or None when `op` cannot."""
    hi = spec.operand_max
    if op == "+":
        hi = min(hi, spec.value_max - value)
        return rng.randint(1, hi) if hi >= 1 else None
    if op == "-":
        hi = min(hi, value)
        return rng.randint(1, hi) if hi >= 1 else None
    if op == "*":
        hi = min(hi, spec.value_max // max(value, 1))
        return rng.randint(2, hi) if hi >= 2 and value > 0 else None
    divisors = [d for d in range(2, hi + 1) if value % d == 0 and value > 0]
    return rng.choice(divisors) if divisors else None


def chain_ops(rng: random.Random, num_ops: int, spec: ChainSpec) -> tuple[int, list[ChainStep]]:
    start = value = rng.randint(1, spec.operand_max)
    steps: list[ChainStep] = []
    for _ in range(num_ops):
        choices = [op for op in spec.ops]
        rng.shuffle(choices)
        for op in choices + ["+", "-"]:  # + or - always fits (value_max >= operand_max)
            b = _operand(rng, value, op, spec)
            if b is not None:
                break
        steps.append(ChainStep(value, op, b))
        value = steps[-1].value
    return start, steps


def question_text(start: int, steps: list[ChainStep]) -> str:
    expr = str(start)
    for k, s in enumerate(steps):
        expr = f"({expr} {s.op} {s.b})" if k < len(steps) - 1 else f"{expr} {s.op} {s.b}"
    return f"What is {expr}?"


def chain_problem(rng: random.Random, spec: ChainSpec, index: int) -> Problem:
    num_ops = rng.randint(spec.min_ops, spec.max_ops)
    start, steps = chain_ops(rng, num_ops, spec)
    return Problem(question_text(start, steps), str(steps[-1].value), f"chain/{num_ops}ops:{index}")


def chain_problems(seed: int, size: int, spec: ChainSpec) -> list[Problem]:
    rng = random.Random(f"chain:{seed}")
    return [chain_problem(rng, spec, i) for i in range(size)]


def parse_question(question: str) -> tuple[int, list[tuple[str, int]]]:
    """(start, [(op, operand), ...]) of a chain question written by `question_text`."""
    parsed = parse_chain(question)
    if parsed is None:
        raise ValueError(f"not a chain question: {question!r}")
    return parsed


def wrong_result(rng: random.Random, step: ChainStep, value_max: int) -> int:
    """A systematic slip: a dropped/extra carry for + and -, a neighbouring times-table entry for *,
    an off-by-one otherwise; always a different number in 0..value_max."""
    right = step.value
    if step.op in "+-":
        carry = (step.op == "+" and step.a % 10 + step.b % 10 >= 10) or (step.op == "-" and step.a % 10 < step.b % 10)
        deltas = [-10, 10] if carry else [-1, 1]
    elif step.op == "*":
        deltas = [-step.a, step.a]
    else:
        deltas = [-1, 1]
    fits = [right + d for d in deltas if 0 <= right + d <= value_max and d != 0]
    if not fits:
        fits = [v for v in (right - 1, right + 1) if 0 <= v <= value_max] or [right + 1]  # after a misconception
    return rng.choice(fits)


MISCONCEIVED = {7: 6, 8: 7}  # x * b is written as x * MISCONCEIVED[b]: one times-table row too low


def misconceived(step: ChainStep) -> int | None:
    """The misconception's result for `step`, or None when the step does not trigger it."""
    if step.op == "*" and step.b in MISCONCEIVED:
        return step.a * MISCONCEIVED[step.b]
    return None


def solution_steps(question: str, error_at: int | None = None, rng: random.Random | None = None,
                   value_max: int = 99, misconception_rate: float = 0.0) -> list[str]:
    """The chain's steps (answer line last). With `error_at` = k, step k writes a wrong result and
    every later step computes correctly from it. With `misconception_rate` > 0 every step that triggers
    the misconception (x * 7, x * 8) writes its result with that probability. Later steps always
    continue from the written value, so the first false equation is the first error."""
    rng = rng or random.Random(0)
    value, ops = parse_question(question)
    steps = []
    for k, (op, b) in enumerate(ops):
        step = ChainStep(value, op, b)
        try:
            right = step.value
        except ValueError:  # a division made inexact by an earlier slip: fall back to a correct value
            right = None
        if right is None:
            step = ChainStep(value, "+" if op in "*/" else op, b)
            right = step.value
        result = wrong_result(rng, step, value_max) if k == error_at else right
        wrong = misconceived(step) if misconception_rate > 0 and k != error_at else None
        if wrong is not None and rng.random() < misconception_rate:
            result = wrong
        steps.append(step.text(result))
        value = result
    steps.append(ANSWER.format(value))
    return steps


def sample_solution(rng: random.Random, question: str, error_rate: float, value_max: int = 99,
                    misconception_rate: float = 0.0) -> Trajectory:
    """A reference solution, with probability `error_rate` carrying one injected slip at a uniform step,
    and the misconception at `misconception_rate` per triggering step. first_error is the exact label
    (the first false equation's index, or -1)."""
    n_ops = len(parse_question(question)[1])
    error_at = rng.randrange(n_ops) if rng.random() < error_rate else None
    steps = solution_steps(question, error_at, rng, value_max, misconception_rate)
    return Trajectory(question, steps, first_error(*parse_question(question), steps)[0], source="chain")
