"""Final-answer extraction and checking.

Model output is untrusted: it is never eval'd. Extraction is plain string work; equivalence is
math-verify (gold first: `verify(gold, pred)` is not symmetric) in a separate worker process with a
hard timeout, so a pathological answer costs at most `timeout_s` and never hangs the caller. Works
from any thread (math-verify's own signal timeouts are switched off; ours is the process boundary).
"""
from __future__ import annotations

import multiprocessing as mp
import re
import threading
from fractions import Fraction

_ANSWER_LINE = re.compile(r"(?:final answer|the answer)\s*(?:is)?\s*[:=]?\s*(.+)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
MAX_ANSWER_CHARS = 200


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), with nested braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1].strip() if depth == 0 else None


def extract_answer(text: str, fallback_last_number: bool = False) -> str | None:
    """The final answer of a solution: \\boxed{}, else an 'answer is X' line, else '#### X'.

    The last number of the text is used only when asked: small models repeat expressions from the
    question, and scoring those as answers inflates accuracy.
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
    return (boxed if boxed is not None else found)[:MAX_ANSWER_CHARS] or None


def _as_number(s: str) -> Fraction | None:
    s = s.replace(",", "").replace("$", "").strip()
    if not re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _verify_worker(gold: str, pred: str) -> bool:
    import logging

    from math_verify import parse, verify

    logging.disable(logging.WARNING)  # "timeout disabled" notices: the timeout is ours, on the process

    gold_p = parse(gold if "$" in gold else f"${gold}$", parsing_timeout=None)
    pred_p = parse(pred if "$" in pred else f"${pred}$", parsing_timeout=None)
    return bool(gold_p and pred_p and verify(gold_p, pred_p, timeout_seconds=None))


class AnswerChecker:
    """Checks predicted answers against gold ones in a worker process with a per-item timeout."""

    def __init__(self, timeout_s: float = 5.0, workers: int = 1):
        self.timeout_s, self.workers = timeout_s, workers
        self._pool = None
        self._lock = threading.Lock()

    def _get_pool(self):
        if self._pool is None:  # spawn: never fork a process that holds torch threads
            self._pool = mp.get_context("spawn").Pool(self.workers)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def check_many(self, golds: list[str | None], preds: list[str | None]) -> list[bool]:
        results: list[bool | None] = [None] * len(golds)
        pending = []
        for i, (gold, pred) in enumerate(zip(golds, preds)):
            if gold is None or pred is None:
                results[i] = False
                continue
            g, p = _as_number(gold), _as_number(pred)
            if g is not None and p is not None:  # fast path, no subprocess
                results[i] = g == p
            else:
                pending.append((i, gold, pred[:MAX_ANSWER_CHARS]))
        if pending:
            with self._lock:
                pool = self._get_pool()
                jobs = [(i, pool.apply_async(_verify_worker, (g, p))) for i, g, p in pending]
                timed_out = False
                for i, job in jobs:
                    try:
                        results[i] = job.get(timeout=self.timeout_s)
                    except mp.TimeoutError:
                        results[i], timed_out = False, True
                    except Exception:
                        results[i] = False  # unparseable answer: wrong, not a crash
                if timed_out:  # a stuck worker cannot be interrupted: replace the pool
                    self.close()
        return [bool(r) for r in results]

    def check(self, gold: str | None, pred: str | None) -> bool:
        return self.check_many([gold], [pred])[0]

    def score_solutions(self, golds: list[str | None], solutions: list[str],
                        fallback_last_number: bool = False) -> list[bool]:
        """Extract each solution's answer and check it: the 'verify' phase of the online loop."""
        preds = [extract_answer(s, fallback_last_number) for s in solutions]
        return self.check_many(golds, preds)
