"""Choosing among finished solutions (docs/method.md, Search): a solution's answer and its canonical form,
step-score aggregation (ScoreSpec) and the selectors (vanilla, weighted, majority) that best-of-N, beam
search, DVTS and re-scoring (rl.search_rescore) share.

Tie-breaking is deterministic: among equal scores/votes the earliest candidate wins.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

from core.answers import extract_answer
from core.steps import join_steps


@dataclass
class Solution:
    steps: list[str]
    n_tokens: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    answer: str | None = None
    key: str | None = None            # canonical answer: solutions group by it
    # best-of-N's prefix cost (rl.search_methods.prefix_cost): what generating this sample and scoring it
    # ran through the policy's and the scorer's backbones (token positions, docs/search.md)
    policy_forward_tokens: int = 0
    scorer_forward_tokens: int = 0

    @property
    def text(self) -> str:
        return join_steps(self.steps)


# ---------------------------------------------------------------- answers
_TEXT_WRAP = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+)\}\{(\d+)\}$")


def canonical_answer(answer: str | None) -> str | None:
    """A cheap canonical form for grouping answers: exact numbers compare by value (72 = 72.0 =
    1,000/... ; \\frac{1}{2} = 0.5 = 1/2), anything else by its lowercased text without spaces."""
    if answer is None:
        return None
    s = _TEXT_WRAP.sub(r"\1", answer).replace("\\!", "").replace("\\,", "").replace("\\%", "%")
    s = s.strip().strip("$").rstrip(".").strip()
    frac = _FRAC.match(s.replace(" ", ""))
    if frac:
        s = f"{frac.group(1)}{frac.group(2)}/{frac.group(3)}"
    number = s.replace(",", "").replace("$", "").rstrip("%").strip()
    if re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+)?", number):
        try:
            value = Fraction(number)
            return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
        except ZeroDivisionError:
            pass
    return re.sub(r"\s+", "", s).lower() or None


def attach_answer(solution: Solution, fallback_last_number: bool = False) -> Solution:
    solution.answer = extract_answer(solution.text, fallback_last_number, max_chars=None) if solution.steps else None
    solution.key = canonical_answer(solution.answer)
    return solution


# ---------------------------------------------------------------- step-score aggregation
def _prod(values: list[float]) -> float:
    return math.prod(max(v, 0.0) for v in values)   # clipped: mean - beta*std can dip below 0


AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {"last": lambda v: v[-1], "min": min, "prod": _prod}


@dataclass(frozen=True)
class ScoreSpec:
    """How a solution's step scores become one number: per step mean - beta * std, then aggregated."""
    aggregate: str = "last"
    beta: float = 0.0                 # 0: the ensemble mean; > 0: uncertainty-aware (penalise disagreement)

    def __post_init__(self):
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate '{self.aggregate}' unknown; use one of {sorted(AGGREGATIONS)}")

    def step_values(self, mean: list[float], std: list[float]) -> list[float]:
        return [m - self.beta * s for m, s in zip(mean, std)] if self.beta else list(mean)

    def solution_score(self, solution: Solution) -> float:
        if not solution.mean:
            return -math.inf          # nothing scored (empty output): ranks last
        return AGGREGATIONS[self.aggregate](self.step_values(solution.mean, solution.std))


# ---------------------------------------------------------------- choosing an answer among solutions
def _first_of_best(keys: list[str], value: dict[str, float]) -> str:
    best = max(value.values())
    return next(k for k in keys if value[k] == best)  # keys in order of first occurrence: earliest wins


def choose_vanilla(solutions: list[Solution], spec: ScoreSpec) -> int | None:
    """Index of the top-scored answered solution (earliest on ties)."""
    answered = [i for i, s in enumerate(solutions) if s.key is not None]
    if not answered:
        return None
    scores = [spec.solution_score(solutions[i]) for i in answered]
    return answered[scores.index(max(scores))]


def _group_choice(solutions: list[Solution], weight: Callable[[Solution], float]) -> int | None:
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, s in enumerate(solutions):
        if s.key is None:
            continue
        totals[s.key] = totals.get(s.key, 0.0) + weight(s)
        first.setdefault(s.key, i)
    if not totals:
        return None
    return first[_first_of_best(list(first), totals)]


def choose_weighted(solutions: list[Solution], spec: ScoreSpec) -> int | None:
    """The answer whose solutions' scores SUM highest (per answer, not per sample)."""
    return _group_choice(solutions, spec.solution_score)


def choose_majority(solutions: list[Solution], spec: ScoreSpec) -> int | None:
    """The most frequent answer; scores are not used."""
    return _group_choice(solutions, lambda s: 1.0)


# Each returns the index of a solution carrying the chosen answer (the earliest one), or None.
SELECTORS: dict[str, Callable[[list[Solution], ScoreSpec], int | None]] = {
    "vanilla": choose_vanilla, "weighted": choose_weighted, "majority": choose_majority}
SCORE_FREE_SELECTORS = {"majority"}
