"""The chain judge: exact first-error labels for the `chain` task ("What is ((7 + 5) * 3) - 4?").

The rule judge checks that every written equation is true; on a chain that is not enough: "16 - 8 = 8"
is a true equation but the wrong step when the question says "- 4". This judge knows the expected
solution shape (tasks.chain.problems): step k must read "a op b = c" with a = the result written in step k-1 (the
start value for k = 0), op and b = the question's k-th operation, and c = a op b; the step after the
last operation must be "The answer is c." with the last written result. The first step breaking any of
these is the first error. A result that inherits an earlier slip is not a new error (a = the value
written before). Extra steps after the answer line are errors; a solution that stops early has no wrong
step (-1: its outcome is wrong, no step is). A question that is not a chain falls back to the rule judge.
"""
from __future__ import annotations

from judges.base import Cost, Judge, Verdict
from judges.config import ChainJudgeConfig
from judges.registry import register_judge
from judges.rule import RuleJudge
from tasks.chain.labels import first_error, parse_chain


@register_judge("chain", config=ChainJudgeConfig)
class ChainJudge(Judge):
    identity = "chain:v1"

    def judge(self, question: str, steps: list[str]) -> Verdict:
        parsed = parse_chain(question)
        if parsed is None:
            return RuleJudge().judge(question, steps)
        k, why = first_error(*parsed, steps)
        return Verdict(k, raw=why, cost=Cost(calls=1))
