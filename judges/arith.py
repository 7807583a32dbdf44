"""A tiny safe arithmetic evaluator over exact fractions, for the rule judge.

Model output is never eval'ed: tokens are numbers, + - * / ^, parentheses and a percent sign, read by
recursive descent into fractions.Fraction. Sizes are capped so pathological input fails fast.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from fractions import Fraction

MAX_DIGITS = 30  # a longer literal is not arithmetic anyone checks by hand
MAX_BITS = 4096  # numerator / denominator size cap for any intermediate value
MAX_EXPONENT = 64
MAX_DEPTH = 64  # parenthesis / unary nesting


class ArithError(ValueError):
    """Not an expression we evaluate (syntax, division by zero, too big): the caller skips it."""


@dataclass(frozen=True)
class Tok:
    kind: str  # "num" | "op" (+ - * / ^) | "(" | ")" | "%"
    value: Fraction | str
    decimals: int | None = None  # digits after the point as written
    scale: Fraction | None = None  # a word after it that may scale it: 5 dozen, 2 million, 50 cents


def number(text: str) -> Tok:
    """A numeric literal such as '12', '3.50', '.5' (commas already removed)."""
    if len(text.replace(".", "")) > MAX_DIGITS:
        raise ArithError("literal too long")
    if len(text) > 1 and text[0] == "0" and text[1] != ".":
        raise ArithError("leading zero: a clock time or a code, not a quantity")
    decimals = len(text.split(".", 1)[1]) if "." in text else 0
    return Tok("num", Fraction(text), decimals)


def evaluate(tokens: list[Tok], percent: bool = True, scaled: bool = True) -> Fraction:
    """Value of a token list. `percent` False reads 'x%' as plain x (for '... * 100 = 20%');
    `scaled` False ignores scale words ('3 + 2 + 2 = 7 dozen' counts dozens)."""
    if scaled:
        tokens = [Tok("num", t.value * t.scale, t.decimals) if t.scale is not None else t for t in tokens]
    parser = _Parser(tokens, percent)
    value = parser.expr(0)
    if parser.pos != len(tokens):
        raise ArithError(f"unexpected token at {parser.pos}")
    return value


class _Parser:
    # expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary | implicit '(')*
    # unary := ('-'|'+') unary | power ; power := atom ('^' unary)? ; atom := num '%'? | '(' expr ')' '%'?
    def __init__(self, tokens: list[Tok], percent: bool):
        self.tokens, self.pos, self.percent = tokens, 0, percent

    def peek(self) -> Tok | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Tok:
        tok = self.peek()
        if tok is None:
            raise ArithError("unexpected end")
        self.pos += 1
        return tok

    def is_op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "op" and tok.value in ops

    def expr(self, depth: int) -> Fraction:
        if depth > MAX_DEPTH:
            raise ArithError("nested too deep")
        value = self.term(depth)
        while self.is_op("+", "-"):
            op = self.take().value
            rhs = self.term(depth)
            value = _checked(value + rhs if op == "+" else value - rhs)
        return value

    def term(self, depth: int) -> Fraction:
        value = self.unary(depth)
        while True:
            if self.is_op("*", "/"):
                op = self.take().value
                rhs = self.unary(depth)
                if op == "/" and rhs == 0:
                    raise ArithError("division by zero")
                value = _checked(value * rhs if op == "*" else value / rhs)
            elif (tok := self.peek()) is not None and tok.kind == "(":  # 2(3+4)
                value = _checked(value * self.unary(depth))
            else:
                return value

    def unary(self, depth: int) -> Fraction:
        if depth > MAX_DEPTH:
            raise ArithError("nested too deep")
        if self.is_op("-", "+"):
            sign = -1 if self.take().value == "-" else 1
            return sign * self.unary(depth + 1)
        return self.power(depth)

    def power(self, depth: int) -> Fraction:
        base = self.atom(depth)
        if not self.is_op("^"):
            return base
        self.take()
        exponent = self.unary(depth + 1)  # right-associative: 2^3^2 = 2^9
        if exponent.denominator != 1 or abs(exponent) > MAX_EXPONENT:
            raise ArithError("exponent out of range")
        if base == 0 and exponent < 0:
            raise ArithError("division by zero")
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if bits * abs(int(exponent)) > MAX_BITS:
            raise ArithError("power too big")
        return base ** int(exponent)

    def atom(self, depth: int) -> Fraction:
        tok = self.take()
        if tok.kind == "num":
            value = tok.value
        elif tok.kind == "(":
            value = self.expr(depth + 1)
            if self.take().kind != ")":
                raise ArithError("unbalanced parenthesis")
        else:
            raise ArithError(f"unexpected {tok.value!r}")
        assert isinstance(value, Fraction)
        while (nxt := self.peek()) is not None and nxt.kind == "%":
            self.take()
            if self.percent:
                value = value / 100
        return value


def _checked(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise ArithError("number too big")
    return value


def rounds_to(exact: Fraction, written: Fraction, decimals: int) -> bool:
    """True if `written` (with `decimals` digits after the point) is `exact` rounded or truncated to
    that many digits: 10/3 -> 3.33, 3.3, 3 are fine, 3.4 is not."""
    if decimals > MAX_DIGITS:
        return False
    with localcontext() as ctx:
        ctx.prec = MAX_BITS // 3 + 2 * MAX_DIGITS  # enough digits for any capped value
        try:
            quantum = Decimal(1).scaleb(-decimals)
            exact_dec = Decimal(exact.numerator) / Decimal(exact.denominator)
            target = Decimal(written.numerator) / Decimal(written.denominator)
            # Half-up is the school rule, half-even Python's round(); truncation is how '50 / 3 = 16 each,
            # 2 left over' and '16.66...%' are written.
            return any(exact_dec.quantize(quantum, rounding=r) == target.quantize(quantum)
                       for r in (ROUND_HALF_UP, ROUND_HALF_EVEN, ROUND_DOWN))
        except InvalidOperation:
            return False
