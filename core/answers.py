"""Final-answer extraction and checking.

Model output is untrusted: it is never eval'd. Extraction is plain string work; equivalence is
math-verify (gold first: `verify(gold, pred)` is not symmetric) in worker processes with a per-item
deadline, so a pathological answer costs at most `timeout_s` and never hangs the caller or the rest
of its batch. Each verdict is "correct", "wrong" or "unverified" (the deadline passed: reported and
counted, never folded silently into "wrong").

The workers are plain subprocesses (`python -c ...`) speaking JSON lines on stdin/stdout, not
multiprocessing children: they never re-import the caller's `__main__`, so a script may use the
checker at top level without an `if __name__ == "__main__":` guard, from any thread.
"""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from fractions import Fraction
from pathlib import Path

_ANSWER_LINE = re.compile(r"(?:final answer|the answer)\s*(?:is)?\s*[:=]?\s*(.+)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_BOX_COMMANDS = ("\\boxed{", "\\fbox{", "\\framebox{")
_WRAPPERS = re.compile(r"^\\(?:textbf|text|mathrm|mathbf)\{(.*)\}$", re.DOTALL)
_CHOICE = re.compile(r"^\(\s*([A-Za-z0-9.\-]+)\s*\)$")  # "(073)", "(C)"; never "(1,2)" (a tuple)
MAX_ANSWER_CHARS = 200   # a prediction is cut to max(this, 2 * len(gold)) before math-verify
MAX_GOLD_CHARS = 1000    # golds are trusted data, but bounded all the same
CORRECT, WRONG, UNVERIFIED = "correct", "wrong", "unverified"
_EMPTY_MATH = re.compile(r"\$\s*\$")
# What may stand in a gold that is a plain number: formatting, units in \text{}, number-valued commands.
_NOT_SYMBOLS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|operatorname|mbox)\s*\{[^{}]*\}|\\[dt]?frac|\\sqrt"
                          r"|\\left|\\right|\\cdot|\\times|\\div|\\pi|\\infty|\\circ|\\degree|\\%|\\pm|\\mp"
                          r"|\\[lg]eq?|\\neq|\\q?quad|\\[,;:! ]|\\!")


def _balanced(text: str, i: int) -> int | None:
    """Index just past the brace that closes the one opened before `i`, else None."""
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return j if depth == 0 else None


def _unwrap(answer: str) -> str:
    """\\textbf{(073)} -> 073: whole-answer formatting commands and multiple-choice parentheses go."""
    answer = answer.strip()
    m = _WRAPPERS.match(answer)
    while m and _balanced(answer, answer.index("{") + 1) == len(answer):
        answer = m.group(1).strip()
        m = _WRAPPERS.match(answer)
    m = _CHOICE.match(answer)
    return m.group(1) if m else answer


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{}, \\framebox{}), nested braces balanced, wrappers off."""
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    i = text.index("{", start) + 1
    end = _balanced(text, i)
    return _unwrap(text[i:end - 1]) if end is not None else None


def extract_answer(text: str, fallback_last_number: bool = False,
                   max_chars: int | None = MAX_ANSWER_CHARS) -> str | None:
    """The final answer of a solution: \\boxed{}, else an 'answer is' line, else '#### X'.

    The last number of the text is used only when asked: small models repeat expressions from the
    question, and scoring those as answers inflates accuracy. `max_chars=None` keeps it whole (the
    checker cuts it against the gold's length).
    """
    found = last_boxed(text)
    if found is None:
        for pattern in (_ANSWER_LINE, _HASHES):
            matches = pattern.findall(text)
            if matches:
                found = matches[-1].strip().splitlines()[0] if matches[-1].strip() else None
                break
    if found is None and fallback_last_number:
        numbers = _NUMBER.findall(text)
        found = numbers[-1] if numbers else None
    if found is None:
        return None
    found = found.strip().strip("$").rstrip(".").strip()
    boxed = last_boxed(found)  # "The answer is $\boxed{5}$."
    found = boxed if boxed is not None else found
    return (found if max_chars is None else found[:max_chars]) or None


def _as_number(s: str) -> Fraction | None:
    s = s.replace(",", "").replace("$", "").strip()
    if not re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def quick_verdict(gold: str | None, pred: str | None) -> str | None:
    """The verdicts that need no math-verify: missing, identical, or both plain numbers."""
    if gold is None or pred is None:
        return WRONG
    gold = normalize_gold(gold)
    if " ".join(gold.split()) == " ".join(pred.split()):
        return CORRECT
    g, p = _as_number(gold), _as_number(pred)
    if g is not None and p is not None:
        return CORRECT if g == p else WRONG
    return None


_SYMBOL_COMMANDS = frozenset(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho sigma tau "
    "upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Upsilon Phi Psi Omega hbar ell".split())


def normalize_gold(gold: str) -> str:
    """Empty `$ $` pairs go; a stray (unpaired) `$` makes the whole text the answer, not the part after it."""
    gold = _EMPTY_MATH.sub(" ", gold).strip()
    return gold.replace("$", " ").strip() if gold.count("$") % 2 else gold


def symbols_dropped(gold: str, parsed: object) -> bool:
    """True when math-verify kept only a part of the gold: a symbol its text names (\\hbar, \\omega) is
    missing from what it parsed, or it parsed a plain number although the text holds a lone letter (x).
    Against such a parse a bare number would be accepted."""
    rest = _NOT_SYMBOLS.sub(" ", gold)
    shown = str(parsed).lower()
    if any(name.lower() not in shown for name in re.findall(r"\\([A-Za-z]+)", rest) if name in _SYMBOL_COMMANDS):
        return True
    if getattr(parsed, "free_symbols", None) != set() or getattr(parsed, "is_number", False) is not True:
        return False
    return re.search(r"(?<![A-Za-z\\])[A-DF-HJ-Za-df-hj-z](?![A-Za-z])", rest) is not None  # e, i: numbers


def _serve() -> None:
    """Worker main loop: one JSON [gold, pred] a line in, one JSON verdict a line out."""
    import logging

    from math_verify import parse, verify

    logging.disable(logging.WARNING)  # "timeout disabled" notices: the deadline is the parent's
    out = sys.stdout
    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        try:
            gold, pred = json.loads(line)
            gold = normalize_gold(gold)
            gold_p = parse(gold if "$" in gold else f"${gold}$", parsing_timeout=None)
            pred_p = parse(pred if "$" in pred else f"${pred}$", parsing_timeout=None)
            ok = bool(gold_p and pred_p and not symbols_dropped(gold, gold_p[0])
                      and verify(gold_p, pred_p, timeout_seconds=None))
        except Exception:  # unparseable answer: wrong, not a crash
            ok = False
        out.write(json.dumps(CORRECT if ok else WRONG) + "\n")
        out.flush()


class _Worker:
    """One verifier subprocess; `job` is the index it is working on, `deadline` when it must answer."""

    START_TIMEOUT_S = 120.0  # importing math-verify (sympy) on a loaded machine

    def __init__(self):
        root = str(Path(__file__).resolve().parents[1])  # the worker imports this very prm package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen([sys.executable, "-c", "from core.answers import _serve; _serve()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        self.job: int | None = None
        self.ready = False
        self.deadline = time.monotonic() + self.START_TIMEOUT_S

    def send(self, job: int, gold: str, pred: str, timeout_s: float) -> None:
        self.job, self.deadline = job, time.monotonic() + timeout_s
        self.proc.stdin.write(json.dumps([gold, pred]) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> str | None:
        """The worker's next line; None if it died (a crash on one answer leaves that one unverified)."""
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


class AnswerChecker:
    """Checks predicted answers against gold ones; each math-verify job has its own `timeout_s`,
    counted from the moment a worker takes it. `counts` tallies every verdict given so far."""

    def __init__(self, timeout_s: float = 5.0, workers: int = 1):
        self.timeout_s, self.workers = timeout_s, workers
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()
        self.counts: Counter = Counter()

    def close(self) -> None:
        for w in self._pool:
            w.kill()
        self._pool = []

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _run(self, jobs: list[tuple[int, str, str]], verdicts: list[str | None]) -> None:
        queue = deque(jobs)
        while len(self._pool) < self.workers:
            self._pool.append(_Worker())
        while queue or any(w.job is not None for w in self._pool):
            for w in self._pool:
                if w.ready and w.job is None and queue:
                    w.send(*queue.popleft(), self.timeout_s)
            waiting = [w for w in self._pool if w.job is not None or not w.ready]
            timeout = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
            readable, _, _ = select.select([w.proc.stdout for w in waiting], [], [], timeout)
            for k, w in enumerate(self._pool):
                if w.proc.stdout in readable:
                    answer = w.receive()
                elif w in waiting and time.monotonic() >= w.deadline:
                    answer = None
                else:
                    continue
                if not w.ready and answer != "ready":
                    raise RuntimeError("answer-check worker failed to start (math-verify importable? "
                                       f"its stderr is above; start timeout {w.START_TIMEOUT_S:.0f} s)")
                if w.job is not None:
                    verdicts[w.job] = answer or UNVERIFIED
                w.ready, w.job = True, None
                if answer is None:  # stuck or dead: a stuck worker cannot be interrupted, replace it
                    w.kill()
                    self._pool[k] = _Worker()

    def verify_many(self, golds: list[str | None], preds: list[str | None]) -> list[str]:
        """"correct", "wrong" or "unverified" for each (gold, pred) pair."""
        verdicts: list[str | None] = []
        jobs = []
        for i, (gold, pred) in enumerate(zip(golds, preds)):
            verdicts.append(quick_verdict(gold, pred))
            if verdicts[-1] is None:
                gold = gold[:MAX_GOLD_CHARS]
                jobs.append((i, gold, pred[:max(MAX_ANSWER_CHARS, 2 * len(gold))]))
        with self._lock:
            if jobs:
                try:
                    self._run(jobs, verdicts)
                except BaseException:
                    self.close()
                    raise
            self.counts.update(verdicts)
        return verdicts

    def check_many(self, golds: list[str | None], preds: list[str | None]) -> list[bool]:
        """True where verified correct. An "unverified" answer is False here but counted in
        `counts["unverified"]`; use `verify_many` to tell it from a wrong one."""
        return [v == CORRECT for v in self.verify_many(golds, preds)]

    def check(self, gold: str | None, pred: str | None) -> bool:
        return self.check_many([gold], [pred])[0]

    def verify_solutions(self, golds: list[str | None], solutions: list[str],
                         fallback_last_number: bool = False) -> list[str]:
        """Extract each solution's answer and verify it: the 'verify' phase of the online loop."""
        return self.verify_many(golds, [extract_answer(s, fallback_last_number, max_chars=None) for s in solutions])

    def score_solutions(self, golds: list[str | None], solutions: list[str],
                        fallback_last_number: bool = False) -> list[bool]:
        return [v == CORRECT for v in self.verify_solutions(golds, solutions, fallback_last_number)]
