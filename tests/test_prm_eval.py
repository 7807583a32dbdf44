"""ProcessBench F1 and PRMBench score on hand-made cases; judges as scorers."""
import math

import pytest

from judges.base import Judge, Verdict
from prm.config import EvalConfig
from prm.eval import (evaluate_prmbench, evaluate_processbench, judge_scorer, markdown_table, processbench_preds,
                      tune_threshold)
from judges.metrics import processbench_f1


def test_processbench_f1_hand_case():
    scores = [[0.9, 0.2, 0.9],   # pred 1, label 1: hit
              [0.9, 0.9, 0.9],   # pred -1, label 2: miss
              [0.9, 0.9],        # pred -1, label -1: hit
              [0.4, 0.9]]        # pred 0, label -1: miss
    labels = [1, 2, -1, -1]
    preds = processbench_preds(scores, 0.5)
    assert preds == [1, -1, -1, 0]
    r = processbench_f1(preds, labels)
    assert r["acc_error"] == 0.5 and r["acc_correct"] == 0.5 and r["f1"] == pytest.approx(0.5)
    # tau 0.3: item 3 becomes -1 (hit), item 0 still 1 (hit) -> acc_error 0.5, acc_correct 1, F1 2/3
    assert processbench_f1(processbench_preds(scores, 0.3), labels)["f1"] == pytest.approx(2 / 3)
    tau = tune_threshold(scores, labels)
    assert 0.2 < tau <= 0.4 and processbench_f1(processbench_preds(scores, tau), labels)["f1"] == pytest.approx(2 / 3)


def test_tune_threshold_when_f1_is_undefined_and_on_given_candidates():
    # every item erroneous (F1 undefined at every tau): the tau naming the most first errors
    scores, labels = [[0.9, 0.35, 0.9], [0.2, 0.9], [0.9, 0.9, 0.6]], [1, 0, 2]
    # tau in (0.35, 0.6]: first_below = 1, 0, -1 (2 of 3); tau in (0.6, 0.9]: 1, 0, 2 (3 of 3)
    tau = tune_threshold(scores, labels)
    assert 0.6 < tau <= 0.9
    assert processbench_f1(processbench_preds(scores, tau), labels)["acc_error"] == 1.0
    # every item all-correct: the tau keeping the most whole (0.95 cuts both, 0.3 neither)
    assert tune_threshold([[0.9, 0.4], [0.8]], [-1, -1], candidates=[0.95, 0.3]) == 0.3
    # candidates are tried in order and the first best wins: 0.65 and 0.7 both name all three, 0.5 two
    assert tune_threshold(scores, labels, candidates=[0.1, 0.5, 0.65, 0.7, 0.95]) == 0.65
    assert tune_threshold([[0.9, 0.2, 0.9], [0.9, 0.9]], [1, -1], candidates=[0.1, 0.3, 0.5]) == 0.3


def oracle_from_labels(items):
    table = {(t.question, tuple(t.steps)): t.first_error for t in items}

    def score(qs, ss):
        out = []
        for q, s in zip(qs, ss):
            k = table[(q, tuple(s))]
            out.append([0.0 if i == k else 1.0 for i in range(len(s))])
        return out
    return score


def test_perfect_scorer_gets_f1_one_on_real_processbench():
    from prm.data import load_processbench
    items = load_processbench("math")
    res = evaluate_processbench(oracle_from_labels(items), EvalConfig(subsets=["math"], limit=40))
    assert res["subsets"]["math"]["f1"] == 1.0 and res["mean_f1"] == 1.0
    assert "ProcessBench" in markdown_table({"processbench": res})


def test_tuned_threshold_is_reported_and_mean_excludes_tuning_subset():
    def constant(qs, ss):
        return [[0.7] * len(s) for s in ss]
    res = evaluate_processbench(constant, EvalConfig(subsets=["gsm8k", "math"], limit=30, tune_on="gsm8k"))
    assert res["tuned_on"] == "gsm8k" and res["mean_f1_held_out"] == res["subsets"]["math"]["f1"] or \
        math.isnan(res["mean_f1_held_out"])


def test_perfect_scorer_on_prmbench():
    from prm.data import load_prmbench
    items = load_prmbench()
    table = {(t.question, tuple(t.steps)): set(t.meta["error_steps"]) for t in items}

    def score(qs, ss):
        return [[0.0 if i in table[(q, tuple(s))] else 1.0 for i in range(len(s))] for q, s in zip(qs, ss)]
    res = evaluate_prmbench(score, limit=60)
    assert res["overall"]["score"] == 1.0 and len(res["categories"]) > 2
    assert "PRMBench" in markdown_table({"prmbench": res})


class FixedJudge(Judge):
    def __init__(self, answers):
        self.answers = answers

    @property
    def identity(self):
        return "fixed"

    def judge(self, question, steps):
        return Verdict(self.answers[question])


def test_judge_as_scorer_invalid_counts_wrong():
    scorer = judge_scorer(FixedJudge({"a": 1, "b": -1, "c": None}))
    scores = scorer(["a", "b", "c"], [["x", "y", "z"], ["x"], ["x", "y"]])
    assert scores[0] == [1.0, 0.0, 1.0] and scores[1] == [1.0] and scores[2] is None
    preds = processbench_preds(scores, 0.5)
    assert preds == [1, -1, None]
    assert processbench_f1(preds, [1, -1, 0])["acc_error"] == 0.5   # invalid never matches
