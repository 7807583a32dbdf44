"""The rule judge: the first step that writes a false equation is the first error.

It reads arithmetic the way solutions write it (LaTeX, GSM8K <<a*b=c>> annotations, $ signs, units,
1,000-style numbers, 'x' between numbers) and checks every `lhs = rhs` pair with judges.arith. It is
precise rather than complete: anything it cannot read with confidence (variables, words like 'of'
glued to an expression, functions) is skipped, so a step without a checkable equation is correct.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Iterator

from judges.arith import ArithError, Tok, evaluate, number, rounds_to
from judges.base import Cost, Judge, Verdict, register_judge

RULES_VERSION = "v1"  # bump when a rule change can change verdicts (it keys the ledger)
MAX_STEP_CHARS = 20_000  # longer steps are checked on their first 20k characters

# ---- 1. text normalisation --------------------------------------------------------------------
_ANNOTATION = re.compile(r"<<([^<>]{1,500})>>")  # GSM8K calculator annotations: <<48/2=24>>
_MIXED = re.compile(r"(\d+)\s*\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")  # 3\frac{4}{5} = 3 + 4/5
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_SHORT_FRAC = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")  # \frac12
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname|boxed)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"(?<![\d.,])(\d{1,3})((?:,\d{3})+)(?![\d,]|\.\d)")
_THOUSANDS_DEC = re.compile(r"(?<![\d.,])(\d{1,3})((?:,\d{3})+)(\.\d+)")
_LATEX_SYMBOLS = {
    r"\times": "*", r"\cdot": "*", r"\ast": "*", r"\div": "/", r"\approx": "≈", r"\simeq": "≈",
    r"\%": "%", r"\$": "", r"\left": "", r"\right": "", r"\,": "", r"\;": "", r"\:": "", r"\!": "",
    r"\quad": " ", r"\qquad": " ", r"\(": " ", r"\)": " ", r"\[": " ", r"\]": " ", "\\\\": " ",
    r"\ldots": "...", r"\dots": "...", r"\cdots": "...", r"\neq": "≠", r"\ne ": "≠ ",
}
_UNICODE = {"×": "*", "∗": "*", "·": "*", "⋅": "*", "÷": "/", "−": "-", "–": "-", "≃": "≈",
            "\u00a0": " ", "\u2009": " ", "\u202f": " "}
_SUPERSCRIPT = re.compile(r"([\d)])?([²³])")  # 5² is a power, cm² a unit
_LATEX_RE = re.compile("|".join(re.escape(k) for k in sorted(_LATEX_SYMBOLS, key=len, reverse=True)))
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))


def normalize(text: str) -> str:
    """LaTeX and typography to plain arithmetic text; words are kept (they decide what is checkable)."""
    text = text.replace("**", " ").replace("$", " ").replace("&", " ")  # bold, dollars, align marks
    text = _MIXED.sub(r"(\1+((\2)/(\3)))", text)
    for _ in range(8):  # innermost braces first; nesting deeper than 8 is left alone
        new = _TEXT_CMD.sub(r" \1 ", _FRAC.sub(r"((\1)/(\2))", text))
        if new == text:
            break
        text = new
    text = _SHORT_FRAC.sub(r"(\1/\2)", text)
    text = _LATEX_RE.sub(lambda m: _LATEX_SYMBOLS[m.group(0)], text)
    text = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], text)
    text = _SUPERSCRIPT.sub(lambda m: m.group(1) + ("^2" if m.group(2) == "²" else "^3") if m.group(1) else "", text)
    text = text.replace("{", "(").replace("}", ")")  # 2^{10}
    text = _THOUSANDS_DEC.sub(lambda m: m.group(1) + m.group(2).replace(",", "") + m.group(3), text)
    return _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), text)


# ---- 2. lexing --------------------------------------------------------------------------------
@dataclass
class Lex:
    kind: str  # num word cmd op ( ) % eq nl punct
    text: str
    spaced: bool  # whitespace before it
    approx: bool = False  # for eq: written as ≈
    tok: Tok | None = None  # for num: parsed value
    unit: str | None = None  # for a value: the unit word dropped after it ('pounds')

_LEXER = re.compile(r"""
    (?P<num>\d+(?:\.\d+)?|\.\d+) | (?P<word>[A-Za-z]+(?:'[A-Za-z]+)?) | (?P<cmd>\\[A-Za-z]+)
  | (?P<punct2>=>|<=|>=|!=|==) | (?P<op>[-+*/^]) | (?P<eq>[=≈]) | (?P<paren>[()]) | (?P<pct>%)
  | (?P<nl>\n) | (?P<ws>[ \t\r\f\v]+) | (?P<punct>.)""", re.VERBOSE)


def lex(text: str) -> list[Lex]:
    out: list[Lex] = []
    spaced = True
    for m in _LEXER.finditer(text):
        kind, s = m.lastgroup, m.group(0)
        if kind == "ws":
            spaced = True
            continue
        if kind == "num":
            try:
                out.append(Lex("num", s, spaced, tok=number(s)))
            except ArithError:
                out.append(Lex("punct", s, spaced))  # an absurd literal: not arithmetic
        elif kind == "punct2":
            out.append(Lex("eq", "=", spaced) if s == "==" else Lex("punct", s, spaced))
        elif kind == "eq":
            out.append(Lex("eq", s, spaced, approx=s == "≈"))
        else:
            out.append(Lex({"paren": s, "pct": "%"}.get(kind, kind), s, spaced))
        spaced = kind == "nl"
    return out


# ---- 3. reading words around numbers ----------------------------------------------------------
# Words that make arithmetic out of the numbers next to them: an expression glued to one is not
# read (half of 50 + 10 = 35 says nothing about 50 + 10), and they are never units.
OPERATOR_WORDS = frozenset("""of times by per plus minus divided multiplied over half twice double triple
    thrice quarter quarters third thirds fourth fifth squared cubed percent than more less fewer add added
    subtract subtracted multiply divide product sum difference quotient ratio average mean root sqrt
    square cube log ln sin cos tan mod factorial choose power exp max min out every""".split())
# Function words: never part of a unit phrase.
STOP_WORDS = frozenset("""a an the and or but so then thus therefore hence is are was were be been being
    equals equal gives give makes make get gets got which that this these those there here it its we he
    she they you i to in on at for with from into onto as if when while after before total left
    remaining not no yes also now will would can could should has have had do does did all both only
    just about approximately roughly around exactly already still up down away back over because since
    where what how why who whose once until unless though although whereas""".split())
# Words that name a number rather than count with it: 'day 1 * 2 = 20' is about day 1.
LABEL_WORDS = frozenset("""day days week weeks month months year years step steps part case round level
    page chapter number no question problem option row column line figure""".split())
# A word that may scale the number before it. Both readings are tried: '5 dozen = 60' and
# '2 + 2 + 2 = 6 dozen' are both right.
SCALE_WORDS = {"hundred": Fraction(100), "thousand": Fraction(1000), "million": Fraction(10**6),
               "billion": Fraction(10**9), "dozen": Fraction(12), "cents": Fraction(1, 100)}
CLEAN_PUNCT = frozenset(",:;.?!\"“”‘’[]→⇒—…")
_VALUE_END = ("num", ")", "%")


def _is_unit_word(t: Lex) -> bool:
    w = t.text.lower()
    return t.kind == "word" and len(w) >= 2 and w not in OPERATOR_WORDS and w not in STOP_WORDS


def rewrite(toks: list[Lex]) -> list[Lex]:
    """Turn words into arithmetic where the meaning is clear; drop units and parenthetical comments."""
    toks = _drop_comments(toks)
    out: list[Lex] = []
    i = 0
    while i < len(toks):
        t, prev = toks[i], out[-1] if out else None
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        w = t.text.lower()
        if t.kind == "word" and prev is not None and prev.kind == "num" and w in SCALE_WORDS and prev.tok:
            prev.tok = replace(prev.tok, scale=SCALE_WORDS[w])  # 1.5 million, 2 dozen, 50 cents
        elif t.kind == "word" and w == "percent" and prev is not None and prev.kind == "num":
            out.append(Lex("%", "%", t.spaced))
        elif (t.kind == "word" and w == "of" and prev is not None and prev.kind == "%"
              and nxt is not None and nxt.kind in ("num", "(")):
            out.append(Lex("op", "*", t.spaced))  # 20% of 50
        elif (t.kind == "word" and w in ("x", "times") and nxt is not None and nxt.kind in ("num", "(")
              and _ends_value(out)):
            out.append(Lex("op", "*", t.spaced))  # 3 x 4, 2 hours x 60
        else:
            out.append(t)
        i += 1
    return _drop_units(out)


def _ends_value(out: list[Lex]) -> bool:
    if out and out[-1].kind in _VALUE_END:
        return True
    return len(out) >= 2 and _is_unit_word(out[-1]) and out[-2].kind in _VALUE_END


def _drop_comments(toks: list[Lex]) -> list[Lex]:
    """Remove parentheticals made only of words: '8 pounds (math and science) + 4 pounds'
    (but not '.1(Number of Minutes)', glued to its number: a product with a variable)."""
    out: list[Lex] = []
    i = 0
    while i < len(toks):
        if toks[i].kind == "(" and toks[i].spaced and i + 1 < len(toks) and _starts_aside(toks[i + 1]):
            i = _matching(toks, i) + 1  # '12 (from 3 miles) + 1': an aside
            continue
        if toks[i].kind == "(" and toks[i].spaced:
            j = i + 1
            while j < len(toks) and (toks[j].kind == "word" or toks[j].text in (",", "'", "-")):
                j += 1
            if j > i + 1 and j < len(toks) and toks[j].kind == ")":
                i = j + 1
                continue
        out.append(toks[i])
        i += 1
    return out


def _starts_aside(t: Lex) -> bool:
    return t.kind == "word" and t.text.lower() in STOP_WORDS | {"from", "i.e", "e.g", "or"}


def _matching(toks: list[Lex], i: int) -> int:
    """Index of the parenthesis closing toks[i] (or the last index when it never closes)."""
    depth = 0
    for j in range(i, len(toks)):
        depth += 1 if toks[j].kind == "(" else -1 if toks[j].kind == ")" else 0
        if depth == 0:
            return j
    return len(toks) - 1


def _drop_units(toks: list[Lex]) -> list[Lex]:
    """After a number, up to 4 unit words ('pounds/book', 'miles per hour') followed by an operator,
    '=' or ')' are units: drop them so '2 books * 2 pounds/book = 4' reads as 2 * 2 = 4."""
    out: list[Lex] = []
    i = 0
    while i < len(toks):
        out.append(toks[i])
        if toks[i].kind in _VALUE_END:
            j, words = i + 1, 0
            while j < len(toks) and words < 4:
                t = toks[j]
                if _is_unit_word(t) and (t.spaced or j > i + 1):  # glued '3ab', '2iz' are variables
                    j, words = j + 1, words + 1
                elif ((t.text == "/" or t.text.lower() == "per") and j + 1 < len(toks)
                      and _is_unit_word(toks[j + 1])):
                    j, words = j + 2, words + 1
                else:
                    break
            if words and j < len(toks) and toks[j].kind in ("op", "eq", ")"):
                first = next(t for t in toks[i + 1:j] if t.kind == "word")
                out[-1] = replace(toks[i], unit=first.text.lower())
                i = j
                continue
        i += 1
    return out


# ---- 4. equations -----------------------------------------------------------------------------
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
        if w in LABEL_WORDS or (b2 is not None and b2.kind in _VALUE_END):
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
    if any(t.kind == "(" and t.spaced and p.kind in _VALUE_END for p, t in zip(run, run[1:])):
        return None  # '5 cents (.05) x 100': a restatement; only a glued 2(3 + 4) multiplies
    return Side(run)


def _depth(run: list[Lex]) -> int:
    return sum(1 if t.kind == "(" else -1 if t.kind == ")" else 0 for t in run)


# ---- 5. checking ------------------------------------------------------------------------------
def _holds(lhs: Side, rhs: Side, approx: bool) -> bool:
    for a in lhs.values():
        for b in rhs.values():
            if a == b or _rounded(rhs, a, b) or _rounded(lhs, b, a):
                return True
            scale = max(abs(a), abs(b))
            if approx and abs(a - b) <= scale / 100:
                return True
            # both computed, one with a rounded decimal literal in it: 1/3 * 90 = 0.33 * 90
            has_decimal = any(t.tok and t.tok.decimals for t in lhs.toks + rhs.toks)
            if has_decimal and not (lhs.plain or rhs.plain) and abs(a - b) <= scale / 100:
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
    pieces = [m.group(1) for m in _ANNOTATION.finditer(text)] + [_ANNOTATION.sub(" ", text)]
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


@register_judge("rule")
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
