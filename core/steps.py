"""Steps and labels: one vocabulary for every part of prmloop (docs/method.md, Data model and steps).

first_error k (0-based; -1 = every step correct)  <->  per-step labels [1]*k + [0] (steps after k cut off).
"""
from __future__ import annotations

import re

STEP_SEPARATOR = "\n\n"   # how steps are written and joined (a blank line); splitting also takes blank lines with spaces
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\\$(])")


def split_steps(text: str, fallback: bool = True) -> list[str]:
    """Split a generated solution into steps on blank lines; strip, drop empties.

    Small models often write no blank line at all; with `fallback` a single-part text is split on
    single newlines, and a single line on sentence ends, so the PRM still sees more than one step.
    """
    parts = [p.strip() for p in _BLANK_LINE.split(text.strip())]
    parts = [p for p in parts if p]
    if fallback and len(parts) == 1:
        lines = [p.strip() for p in parts[0].split("\n") if p.strip()]
        if len(lines) > 1:
            parts = lines
        else:
            parts = [s.strip() for s in _SENTENCE_END.split(parts[0]) if s.strip()]
    return [clean_step(p) for p in parts]


def clean_step(step: str) -> str:
    """Inside a step, collapse any blank line to a space so a step never spans a step boundary."""
    return _BLANK_LINE.sub(" ", step.strip())


def join_steps(steps: list[str]) -> str:
    return STEP_SEPARATOR.join(steps)


def labels_from_first_error(first_error: int, n_steps: int) -> list[int]:
    """Training labels for a trajectory: [1]*k + [0], or all ones for k = -1 (steps after k dropped)."""
    if first_error == -1:
        return [1] * n_steps
    if not 0 <= first_error < n_steps:
        raise ValueError(f"first_error {first_error} out of range for {n_steps} steps")
    return [1] * first_error + [0]


def first_error_from_labels(labels: list[int]) -> int:
    """Inverse of labels_from_first_error; only the first 0 matters."""
    for i, label in enumerate(labels):
        if label not in (0, 1):
            raise ValueError(f"step label {label!r} at step {i} is not 0 or 1")
        if label == 0:
            return i
    return -1


def truncate_after_error(steps: list[str], first_error: int) -> list[str]:
    """Steps a PRM is trained on: everything up to and including the first wrong step."""
    return list(steps) if first_error == -1 else list(steps[: first_error + 1])


def first_below(scores: list[float], threshold: float) -> int:
    """ProcessBench-style prediction: index of the first step scored below `threshold`, else -1."""
    for i, s in enumerate(scores):
        if s < threshold:
            return i
    return -1
