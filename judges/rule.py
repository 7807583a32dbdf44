"""The rule judge: the first step that writes a false equation is the first error.

It reads arithmetic the way solutions write it (LaTeX, GSM8K <<a*b=c>> annotations, $ signs, units,
1,000-style numbers, 'x' between numbers) and checks every `lhs = rhs` pair with judges.arith. It is
precise rather than complete: anything it cannot read with confidence (variables, words like 'of'
glued to an expression, functions) is skipped, so a step without a checkable equation is correct.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator

from judges.arith import ArithError, Tok, evaluate, rounds_to
from judges.base import Cost, Judge, Verdict
from judges.config import RuleJudgeConfig
from judges.registry import register_judge
from judges.rule_text import (ANNOTATION, CLEAN_PUNCT, LABEL_WORDS, OPERATOR_WORDS, VALUE_END, Lex, lex,
                              normalize, rewrite)

RULES_VERSION = "v1"  # bump when a rule change can change verdicts (it keys the ledger)
MAX_STEP_CHARS = 20_000  # longer steps are checked on their first 20k characters


# ---- equations -----------------------------------------------------------------------------
@dataclass
class Side:
    toks: list[Lex]

    @property
    def text(self) -> str:
        return " ".join(t.text for t in self.toks)

    @property
    def plain(self) -> bool:
        """A single written number (maybe negative or a percent): what 'rounded to c' applies to."""
        core = self.toks[1:] if self.toks and self.toks[0].text == "-" else self.toks
        return len(core) >= 1 and core[0].kind == "num" and all(t.kind == "%" for t in core[1:])

    def values(self) -> set[Fraction]:
        """Every reading of the side: with and without '%' as /100, scale words, and a glued fraction
        taken as one number ('25 / 1/3' meaning 25 / (1/3))."""
        readings = [self._tokens(False)]
        if self._glued_fraction() is not None:
            readings.append(self._tokens(True))
        has_pct = any(t.kind == "%" for t in self.toks)
        has_scale = any(t.tok is not None and t.tok.scale is not None for t in self.toks)
        return {evaluate(toks, percent=pct, scaled=scaled)
                for toks in readings for pct in {True, not has_pct} for scaled in {True, not has_scale}}

    def _glued_fraction(self) -> int | None:
        """Index of a 'b/c' written without spaces after a spaced operator: 'a / b/c'."""
        t = self.toks
        for i in range(1, len(t) - 2):
            if (t[i].kind == "num" and t[i + 1].text == "/" and t[i + 2].kind == "num"
                    and not t[i + 1].spaced and not t[i + 2].spaced and t[i - 1].kind == "op" and t[i].spaced):
                return i
        return None

    def _tokens(self, group_fraction: bool) -> list[Tok]:
        toks = [t.tok if t.kind == "num" and t.tok else Tok(t.kind, t.text) for t in self.toks]
        i = self._glued_fraction() if group_fraction else None
        if i is not None:
            toks = toks[:i] + [Tok("(", "(")] + toks[i:i + 3] + [Tok(")", ")")] + toks[i + 3:]
        return toks


def equations(toks: list[Lex]) -> Iterator[tuple[Side, Side, bool]]:
    """Yield (lhs, rhs, approx) for every '=' between two sides we can read with confidence."""
    parts: list[tuple[str, Any]] = []  # ("run", [Lex]) | ("eq", Lex) | ("other", Lex)
    run: list[Lex] = []
    for t in toks:
        if t.kind in ("num", "op", "(", ")", "%"):
            run.append(t)
            continue
        if run:
            parts.append(("run", run))
            run = []
        parts.append((t.kind if t.kind == "eq" else "other", t))
    if run:
        parts.append(("run", run))

    def part(j: int) -> tuple[str, Any] | None:
        return parts[j] if 0 <= j < len(parts) else None

    for j, (kind, eq) in enumerate(parts):
        left, right = part(j - 1), part(j + 1)
        if kind != "eq" or left is None or right is None or left[0] != "run" or right[0] != "run":
            continue
        before, before2, after = part(j - 2), part(j - 3), part(j + 2)
        b2 = None if before2 is None else before2[1][-1] if before2[0] == "run" else before2[1]
        lhs = _left_side(left[1], before and before[1], b2)
        rhs = _right_side(right[1], after and after[1])
        if lhs is not None and rhs is not None:
            rhs_unit = after[1].text.lower() if after and after[0] == "other" and after[1].kind == "word" else None
            if _different_units(left[1][-1].unit, rhs_unit or right[1][-1].unit):
                continue  # '6 inches = 6/12 feet': a conversion, not arithmetic
            if lhs.plain and before is not None and before[0] == "other" and before[1].kind == "word":
                continue  # 'the cost of 5 apples = 5 * 2': a description, not a value
            yield lhs, rhs, eq.approx


def _different_units(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    return a.rstrip("s") != b.rstrip("s")


def _left_side(run: list[Lex], b: Lex | None, b2: Lex | None) -> Side | None:
    """The run before '=' as a side, or None when what precedes it makes it unreadable."""
    edge_glued = not run[0].spaced
    if b is not None and b.kind == "punct" and (b.text not in CLEAN_PUNCT or edge_glued):
        return None  # '√16', '16,0000/10', '6:00+18'
    if b is not None and b.kind == "cmd":
        return None  # \sqrt, \pi, \log
    if b is not None and b.kind == "word":
        w = b.text.lower()
        if w in OPERATOR_WORDS or edge_glued or (len(w) == 1 and w not in ("a", "i")):
            return None  # 'half of 50 + 10', 'x(3 + 4)', 'x + 3'
        if w in LABEL_WORDS or (b2 is not None and b2.kind in VALUE_END):
            return None  # 'day 1 * 2', '1 hour 20 = ...', '1 and 1/4 = ...'
    if b is not None and b.text == "," and b2 is not None and b2.kind == "num":
        return None  # '14, 400 / 80': a list, or a broken thousands separator
    if run[0].text == "-" and len(run) > 1 and run[1].spaced:
        if b is not None and b.kind == "word":
            return None  # 'cost - 3 = 7': a variable minus three
        run = run[1:]  # a list bullet: '- 3 + 4 = 7'
    if _depth(run) < 0:
        return None  # '(3, 4 + 10) = ...': closes a parenthesis (a tuple?) opened before it
    return _side(run)


def _right_side(run: list[Lex], b: Lex | None) -> Side | None:
    """The run after '=' as a side, or None when what follows it makes it unreadable."""
    glued = b is not None and not b.spaced
    if b is not None and b.kind == "punct" and (b.text not in CLEAN_PUNCT or (glued and b.text == ":")):
        return None  # '= 5!', '= 00:00'
    if b is not None and b.kind == "cmd":
        return None
    if b is not None and b.kind == "word":
        w = b.text.lower()
        if w in OPERATOR_WORDS or glued or (len(w) == 1 and w not in ("a", "i")):
            return None  # '= 1/2 of 50', '= 3x'
    if _depth(run) > 0:
        return None  # '= (5, 7)': opens a parenthesis (a tuple?) that closes after it
    return _side(run)


def _side(run: list[Lex]) -> Side | None:
    while run and run[0].kind == "(" and _depth(run) > 0:
        run = run[1:]  # '(so 3 + 4 = 7)': the opening parenthesis belongs to the sentence
    while run and run[-1].kind == ")" and _depth(run) < 0:
        run = run[:-1]
    if not run or _depth(run) != 0 or run[-1].kind == "op" or run[0].kind in ("%", ")"):
        return None
    if run[0].kind == "op" and run[0].text != "-":
        return None
    if any(t.kind == "(" and t.spaced and p.kind in VALUE_END for p, t in zip(run, run[1:])):
        return None  # '5 cents (.05) x 100': a restatement; only a glued 2(3 + 4) multiplies
    return Side(run)


def _depth(run: list[Lex]) -> int:
    return sum(1 if t.kind == "(" else -1 if t.kind == ")" else 0 for t in run)


# ---- checking ------------------------------------------------------------------------------
def _holds(lhs: Side, rhs: Side, approx: bool) -> bool:
    # both sides computed, one with a rounded decimal literal in it: 1/3 * 90 = 0.33 * 90 = 29.7
    rounded_inputs = not (lhs.plain or rhs.plain) and any(t.tok and t.tok.decimals for t in lhs.toks + rhs.toks)
    for a in lhs.values():
        for b in rhs.values():
            if a == b or _rounded(rhs, a, b) or _rounded(lhs, b, a):
                return True
            scale = max(abs(a), abs(b))
            if (approx or rounded_inputs) and abs(a - b) <= scale / 100:
                return True
    return False


def _rounded(side: Side, exact: Fraction, written: Fraction) -> bool:
    if not side.plain:
        return False
    tok = next(t.tok for t in side.toks if t.kind == "num")
    return tok is not None and tok.decimals is not None and rounds_to(exact, written, tok.decimals)


def _running_total(lhs: Side, rhs: Side) -> bool:
    """'3 + 4 = 7 + 1 = 8' is sloppy, not wrong: the right side starts with the left side's value."""
    t = rhs.toks
    if len(t) < 3 or t[0].kind != "num" or t[1].kind != "op" or t[0].tok is None:
        return False
    return t[0].tok.value in lhs.values()


def false_equation(text: str) -> str | None:
    """Describe the first false equation in a step, or None if every checkable one holds."""
    text = text[:MAX_STEP_CHARS]
    pieces = [m.group(1) for m in ANNOTATION.finditer(text)] + [ANNOTATION.sub(" ", text)]
    for piece in pieces:
        for lhs, rhs, approx in equations(rewrite(lex(normalize(piece)))):
            try:
                if lhs.plain and rhs.plain:
                    continue  # '1 hour = 60 minutes', 'x = 5': nothing computed
                if _holds(lhs, rhs, approx) or _running_total(lhs, rhs):
                    continue
                shown = " or ".join(sorted(_fmt(v) for v in lhs.values()))
            except ArithError:
                continue
            return f"{lhs.text} {'≈' if approx else '='} {rhs.text} is false ({lhs.text} = {shown})"
    return None


def _fmt(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{float(v):.6g}"


@register_judge("rule", config=RuleJudgeConfig)
class RuleJudge(Judge):
    @property
    def identity(self) -> str:
        return f"rule:{RULES_VERSION}"

    def judge(self, question: str, steps: list[str]) -> Verdict:
        for i, step in enumerate(steps):
            problem = false_equation(step)
            if problem is not None:
                return Verdict(i, raw=f"step {i}: {problem}", cost=Cost(calls=1))
        return Verdict(-1, raw="no false equation", cost=Cost(calls=1))
