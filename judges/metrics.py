"""ProcessBench F1 (docs/method.md, Metrics)."""
from __future__ import annotations

import math
from typing import Sequence


def processbench_f1(preds: Sequence[int | None], labels: Sequence[int]) -> dict[str, float]:
    """Harmonic mean of the accuracy on erroneous items (label != -1: the exact first-error index
    must be named) and on all-correct items (label == -1: the prediction must be -1).

    An invalid prediction (None) counts as wrong. An empty group gives NaN for its accuracy and F1.
    Both accuracies 0 (no prediction right) gives F1 0.0, the limit of the harmonic mean as either
    accuracy goes to 0; the official script divides 0 by 0 there and reports nan. The project reports
    0.0 so a judge that names nothing right scores the bottom of the scale and stays in the mean F1 over
    subsets, instead of dropping out of it as nan. Returns {acc_error, acc_correct, f1, n}.
    """
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    error_hits = [p == y for p, y in zip(preds, labels) if y != -1]
    correct_hits = [p == -1 for p, y in zip(preds, labels) if y == -1]
    acc_error = sum(error_hits) / len(error_hits) if error_hits else math.nan
    acc_correct = sum(correct_hits) / len(correct_hits) if correct_hits else math.nan
    if math.isnan(acc_error) or math.isnan(acc_correct):
        f1 = math.nan
    elif acc_error + acc_correct == 0:
        f1 = 0.0
    else:
        f1 = 2 * acc_error * acc_correct / (acc_error + acc_correct)
    return {"acc_error": acc_error, "acc_correct": acc_correct, "f1": f1, "n": len(labels)}
