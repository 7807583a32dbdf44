"""prm.replay: trains only on paid, valid labels; resumes exactly. prm.quality: hand-computed AUROC/F1."""
import math
import os
import socket
import sqlite3
import time

import pytest

from judges.base import Cost, Judge, Verdict
from judges.ledger import LabelLedger
from prm.config import ReplayConfig
from prm.model import StepScores
from prm.quality import step_auroc, step_auroc_within, first_error_f1
from prm.replay import LabelReplay


class ScriptedJudge(Judge):
    """Verdict from the question text: 'bad:<k>' answers first_error k (maybe out of range), 'invalid' None."""
    identity = "scripted:v1"

    def judge(self, question, steps):
        if question.startswith("invalid"):
            return Verdict(None, raw="?", cost=Cost(calls=1))
        if question.startswith("bad:"):
            return Verdict(int(question.split(":")[1].split()[0]), raw="", cost=Cost(calls=1))
        return Verdict(-1, raw="", cost=Cost(calls=1))


class RecordingLearner:
    def __init__(self):
        self.batches = []

    def update(self, trajectories, mask):
        assert list(mask) == [True] * len(trajectories)
        self.batches.append([(t.question, t.first_error) for t in trajectories])
        return {"loss": 0.5}

    def score(self, questions, steps):
        return [StepScores([0.9] * len(s), [0.0] * len(s)) for s in steps]


def _pay(ledger, items):
    ledger.label(ScriptedJudge(), items)


def test_replay_never_trains_on_invalid_or_unpaid_labels(tmp_path):
    with LabelLedger(tmp_path / "l.sqlite") as ledger:
        _pay(ledger, [("good a", ["1 + 1 = 2"]), ("bad:0 b", ["1 + 1 = 3", "x"]), ("invalid c", ["s"]),
                      ("bad:5 d", ["only", "two"])])  # first_error 5 of 2 steps: a broken verdict, never trained on
        # an unpaid label: a reservation of a live process, no verdict committed
        with sqlite3.connect(tmp_path / "l.sqlite") as db:
            db.execute("INSERT INTO reservations (judge, item_hash, tokens, host, pid, created_at, expires_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", ("scripted:v1", "h", 0, socket.gethostname(), os.getpid(),
                                                        time.time(), time.time() + 600))
        ledger.label(type("Other", (ScriptedJudge,), {"identity": "other:v1"})(), [("good other", ["z"])])
        replay = LabelReplay(ledger, "scripted:v1", ReplayConfig(steps=20, batch_size=4))
        learner = RecordingLearner()
        metrics = replay.train(learner)
    seen = {q for b in learner.batches for q, _ in b}
    assert seen == {"good a", "bad:0 b"}
    assert all(k in (-1, 0) for b in learner.batches for _, k in b)
    assert metrics["prm/replay_size"] == 2 and metrics["prm/replay_new"] == 2


def test_replay_mixes_new_and_old_and_stays_bounded(tmp_path):
    with LabelLedger(tmp_path / "l.sqlite") as ledger:
        replay = LabelReplay(ledger, "scripted:v1", ReplayConfig(capacity=10, steps=5, batch_size=4, new_fraction=0.25))
        _pay(ledger, [(f"old {i}", ["s"]) for i in range(8)])
        replay.train(RecordingLearner())
        _pay(ledger, [(f"new {i}", ["s"]) for i in range(6)])
        learner = RecordingLearner()
        replay.train(learner)
    assert len(replay.buffer) == 10  # capacity: the 4 oldest were evicted
    assert [q for _, t in replay.buffer for q in [t.question]][:2] == ["old 4", "old 5"]
    for batch in learner.batches:
        assert sum(q.startswith("new") for q, _ in batch) == 1 and len(batch) == 4
        assert len({q for q, _ in batch}) == 4  # no repeat inside a batch


def test_replay_resumes_exactly(tmp_path):
    cfg = ReplayConfig(capacity=6, steps=3, batch_size=3, new_fraction=0.5)
    with LabelLedger(tmp_path / "l.sqlite") as ledger:
        def round_(replay, r):
            _pay(ledger, [(f"r{r} {i}", ["s"]) if i % 3 else (f"bad:0 r{r} {i}", ["s"]) for i in range(4)])
            learner = RecordingLearner()
            replay.train(learner)
            return learner.batches

        straight = LabelReplay(ledger, "scripted:v1", cfg, seed=3)
        round_(straight, 1)
        round_(straight, 2)
        state = straight.state_dict()
        expected = round_(straight, 3)
        resumed = LabelReplay(ledger, "scripted:v1", cfg, seed=3)
        resumed.load_state_dict(state)
        with sqlite3.connect(tmp_path / "l.sqlite") as db:
            db.execute("DELETE FROM labels WHERE question LIKE 'r3%' OR question LIKE 'bad:0 r3%'")
        assert round_(resumed, 3) == expected
    assert [t.question for _, t in resumed.buffer] == [t.question for _, t in straight.buffer]


def test_heldout_quality_is_logged(tmp_path):
    from tasks.problems import Trajectory
    heldout = [Trajectory("q", ["a", "b"], 1), Trajectory("q", ["a"], -1)]
    with LabelLedger(tmp_path / "l.sqlite") as ledger:
        m = LabelReplay(ledger, "scripted:v1", ReplayConfig(), heldout=heldout).train(RecordingLearner())
    # constant scores: every pair ties -> AUROC 1/2; nothing below 0.5 -> the error item is missed -> F1 0
    assert m["prm/heldout_auroc"] == 0.5 and m["prm/heldout_auroc_within"] == 0.5 and m["prm/heldout_f1"] == 0.0


def test_step_auroc_matches_hand_computation():
    # item A (q1): first error 1, scores [0.9, 0.2] -> correct 0.9, error 0.2
    # item B (q2): all correct, scores [0.1, 0.6]
    # item C (q2): first error 0, scores [0.6, 0.3] -> error 0.6 (step after it unlabelled)
    qs, ks, ss = ["q1", "q2", "q2"], [1, -1, 0], [[0.9, 0.2], [0.1, 0.6], [0.6, 0.3]]
    # pooled pairs: correct {0.9, 0.1, 0.6} x error {0.2, 0.6}: wins 0.9>0.2, 0.9>0.6, 0.6>0.2, 0.6=0.6 (1/2)
    assert step_auroc(ks, ss) == pytest.approx(3.5 / 6)
    # within: q1 pairs (0.9 vs 0.2): 1 win; q2 correct {0.1, 0.6} x error {0.6}: 0 + 1/2  -> 1.5 / 3
    assert step_auroc_within(qs, ks, ss) == pytest.approx(1.5 / 3)
    # tau 0.5: preds A -> 1 (hit), B -> 0 (miss, should be -1), C -> 1 (miss): acc_err 1/2, acc_ok 0 -> F1 0
    assert first_error_f1(ks, ss, 0.5) == 0.0
    # tau 0.15: preds A -> -1, B -> 0, C -> -1: all wrong
    assert first_error_f1(ks, ss, 0.15) == 0.0
    assert math.isnan(step_auroc([-1], [[0.3]]))


class DelayedJudge(ScriptedJudge):
    """Later items answer sooner: with requests in flight, the ledger commits them out of input order."""

    def __init__(self, concurrency):
        self.max_concurrency = concurrency

    def judge(self, question, steps):
        time.sleep(0.002 * (20 - int(question.split()[-1])))
        return super().judge(question, steps)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_replay_batches_do_not_follow_the_ledgers_commit_order(tmp_path, concurrency):
    cfg = ReplayConfig(capacity=12, steps=4, batch_size=4, new_fraction=0.5)

    def run(path, judge):
        with LabelLedger(path) as ledger:
            replay, batches = LabelReplay(ledger, "scripted:v1", cfg, seed=7), []
            for r in range(3):
                ledger.label(judge, [(f"{'bad:0 ' if i % 3 == 0 else ''}r{r} {i}", ["s", "t"]) for i in range(8)])
                learner = RecordingLearner()
                replay.train(learner)
                batches.append(learner.batches)
            order = [q for _, q in ledger._db.query("SELECT id, question FROM labels ORDER BY id")]
        return batches, order

    serial, serial_order = run(tmp_path / "serial.sqlite", DelayedJudge(1))
    parallel, parallel_order = run(tmp_path / "parallel.sqlite", DelayedJudge(concurrency))
    if concurrency > 1:
        assert parallel_order != serial_order  # the commit orders really differ
    assert parallel == serial
def test_heldout_f1_uses_the_threshold_tuned_on_the_validation_problems():
    """Scores all above 0.5: at the fixed tau every error goes unnamed (F1 0); the tau tuned on the
    validation problems (errors at 0.6, right steps at 0.9) names them on the test problems."""
    from prm.quality import heldout_quality, split_by_problem
    qs = ["v1", "v1", "v2", "t1", "t1", "t2"]
    ks = [1, -1, 0, 1, -1, 0]
    ss = [[0.9, 0.6], [0.9, 0.9], [0.6], [0.9, 0.6], [0.9, 0.9], [0.6]]
    assert split_by_problem(qs) == ([0, 1, 2], [3, 4, 5])
    assert first_error_f1(ks[3:], ss[3:], 0.5) == 0.0
    q = heldout_quality(qs, ks, ss, threshold=0.5, prefix="p/")
    assert 0.6 < q["p/tau"] <= 0.9 and q["p/f1"] == 1.0
    # tuned on validation only: flipping the validation scores moves tau, the test scores do not
    flipped = [[0.6, 0.9], [0.6, 0.6], [0.9]] + ss[3:]
    assert heldout_quality(qs, ks, flipped, prefix="p/")["p/f1"] < 1.0
