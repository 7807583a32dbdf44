"""prm.quality's first-error F1: one code path, pinned on a hand-computed example."""
import math

import pytest

from prm.quality import first_error_f1, scorer_quality

# tau = 0.5; prediction = the first step scored below tau (-1: none)
QUESTIONS = ["a", "b", "c"]
FIRST_ERRORS = [1, 0, -1]
SCORES = [[0.9, 0.2, 0.8],   # predicts 1, label 1: right
          [0.7, 0.1],        # predicts 1, label 0: wrong
          [0.9, 0.6]]        # predicts -1, label -1: right


def test_first_error_f1_and_scorer_quality_agree_on_a_hand_computed_example():
    # acc_error = 1/2 (a right, b wrong), acc_correct = 1/1, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert first_error_f1(FIRST_ERRORS, SCORES, 0.5) == pytest.approx(2 / 3)
    quality = scorer_quality(QUESTIONS, FIRST_ERRORS, SCORES, 0.5, prefix="q/")
    assert quality["q/f1"] == pytest.approx(2 / 3) and quality["q/acc_error"] == pytest.approx(0.5)
    # tau = 0.15: b's 0.1 is still below, a's 0.2 is not (a predicts -1: wrong) -> acc_error 0, F1 0
    assert first_error_f1(FIRST_ERRORS, SCORES, 0.15) == 0.0
    assert scorer_quality(QUESTIONS, FIRST_ERRORS, SCORES, 0.15)["f1"] == 0.0
    # no all-correct item: F1 undefined (NaN), acc_error still defined
    only_errors = scorer_quality(QUESTIONS[:2], FIRST_ERRORS[:2], SCORES[:2], 0.5)
    assert math.isnan(only_errors["f1"]) and only_errors["acc_error"] == pytest.approx(0.5)
