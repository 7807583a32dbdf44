"""How the rule judge reads solution text: LaTeX and typography normalised, lexed into tokens, and
words turned into arithmetic where their meaning is clear (units dropped, '20% of', '3 x 4', '5 dozen').
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from fractions import Fraction

from judges.arith import ArithError, Tok, number

# ---- text normalisation --------------------------------------------------------------------
ANNOTATION = re.compile(r"<<([^<>]{1,500})>>")  # GSM8K calculator annotations: <<48/2=24>>
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


def _superscript(m: re.Match) -> str:
    return m.group(1) + ("^2" if m.group(2) == "²" else "^3") if m.group(1) else ""


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
    text = _SUPERSCRIPT.sub(_superscript, text)
    text = text.replace("{", "(").replace("}", ")")  # 2^{10}
    text = _THOUSANDS_DEC.sub(lambda m: m.group(1) + m.group(2).replace(",", "") + m.group(3), text)
    return _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), text)


# ---- lexing --------------------------------------------------------------------------------
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


# ---- reading words around numbers ----------------------------------------------------------
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
VALUE_END = ("num", ")", "%")


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
    if out and out[-1].kind in VALUE_END:
        return True
    return len(out) >= 2 and _is_unit_word(out[-1]) and out[-2].kind in VALUE_END


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
        if toks[i].kind in VALUE_END:
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
