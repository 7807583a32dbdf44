"""The chain judge: exact first-error labels for the `chain` task ("What is ((7 + 5) * 3) - 4?").

The rule judge checks that every written equation is true; on a chain that is not enough: "16 - 8 = 8"
is a true equation but the wrong step when the question says "- 4". This judge knows the expected
solution shape (prm.chain): step k must read "a op b = c" with a = the result written in step k-1 (the
start value for k = 0), op and b = the question's k-th operation, and c = a op b; the step after the
last operation must be "The answer is c." with the last written result. The first step breaking any of
these is the first error. A result that inherits an earlier slip is not a new error (a = the value
written before). Extra steps after the answer line are errors; a solution that stops early has no wrong
step (-1: its outcome is wrong, no step is). A question that is not a chain falls back to the rule judge.
"""
from __future__ import annotations

import re

from judges.base import Cost, Judge, Verdict, register_judge
from judges.config import ChainJudgeConfig
from judges.rule import RuleJudge

STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (-?\d+)")
ANSWER = "The answer is {}."


def parse_chain(question: str) -> tuple[int, list[tuple[str, int]]] | None:
    """(start, [(op, operand), ...]) of "What is ((a op b) op c) ...?", or None if it is not one."""
    if not (question.startswith("What is ") and question.endswith("?")):
        return None
    toks = question[8:-1].replace("(", " ").replace(")", " ").split()
    if len(toks) < 3 or len(toks) % 2 == 0 or not all(t.isdigit() for t in toks[::2]) \
            or not all(t in "+-*/" and len(t) == 1 for t in toks[1::2]):
        return None
    return int(toks[0]), [(toks[i], int(toks[i + 1])) for i in range(1, len(toks), 2)]


def apply(a: int, op: str, b: int) -> int | None:
    if op == "/":
        return a // b if b and a % b == 0 else None
    return a + b if op == "+" else a - b if op == "-" else a * b


def first_error(start: int, ops: list[tuple[str, int]], steps: list[str]) -> tuple[int, str]:
    value = start
    for k, step in enumerate(steps):
        if k == len(ops):
            if step.strip() != ANSWER.format(value):
                return k, f"step {k}: expected '{ANSWER.format(value)}'"
            continue
        if k > len(ops):
            return k, f"step {k}: a step after the answer"
        m = STEP.fullmatch(step.strip())
        op, b = ops[k]
        if m is None:
            return k, f"step {k}: not 'a {op} {b} = c'"
        a, written_op, written_b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if (a, written_op, written_b) != (value, op, b):
            return k, f"step {k}: computes {a} {written_op} {written_b}, the chain asks {value} {op} {b}"
        if apply(a, op, b) != c:
            return k, f"step {k}: {a} {op} {b} = {c} is false"
        value = c
    return -1, "no error (stopped early)" if len(steps) <= len(ops) else "no error"


@register_judge("chain")
class ChainJudge(Judge):
    identity = "chain:v1"
    config_class = ChainJudgeConfig

    def judge(self, question: str, steps: list[str]) -> Verdict:
        parsed = parse_chain(question)
        if parsed is None:
            return RuleJudge().judge(question, steps)
        k, why = first_error(*parsed, steps)
        return Verdict(k, raw=why, cost=Cost(calls=1))
