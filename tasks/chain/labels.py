"""The chain task's exact first-error rule (the judge `chain` applies it, judges/chain.py): step k must
read "a op b = c" with a = the result written in step k-1 (the start value for k = 0), op and b = the
question's k-th operation, and c = a op b; the step after the last operation must be "The answer is
c." with the last written result."""
from __future__ import annotations

import re

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

