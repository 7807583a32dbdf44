"""The judge interface, registry, config schema, oracle, critic parsing, metric and ledger."""
from __future__ import annotations

import json
import math
import sqlite3
import threading
import time

from dataclasses import dataclass

import pytest

from judges import (JUDGES, Cost, Judge, JudgeConfig, LabelLedger, OracleJudge, RuleJudge, Verdict, item_key,
                    make_judge, processbench_f1, register_judge, validate_judge_config)
from judges.base import run_bounded
from judges.critic import critic_prompt, parse_verdict


# ---- interface ----------------------------------------------------------------------------------
def test_cost_adds_and_sums():
    a, b = Cost(1, 10, 2, 0.5), Cost(2, 5, 1, 0.25)
    assert a + b == Cost(3, 15, 3, 0.75) and sum([a, b]) == a + b and (a + b).tokens == 18


def test_item_key_is_canonical():
    assert item_key("q", ["a", "b"]) == item_key("q", ["a", "b"])
    assert item_key("q", ["a", "b"]) != item_key("q", ["ab"]) != item_key("qa", ["b"])
    assert len(item_key("q", [])) == 64


def test_registry_and_make_judge():
    assert {"oracle", "rule", "llm"} <= set(JUDGES)
    assert isinstance(make_judge({"name": "rule"}), RuleJudge)
    assert isinstance(make_judge(JudgeConfig(name="rule")), RuleJudge)
    with pytest.raises(KeyError, match="registered judges"):
        make_judge({"name": "nope"})
    with pytest.raises(ValueError, match="modle"):
        make_judge({"name": "llm", "modle": "x"})
    with pytest.raises(ValueError, match="temperature"):
        make_judge({"name": "llm", "temperature": "hot"})
    with pytest.raises(ValueError, match="max_concurrency"):
        make_judge({"name": "llm", "max_concurrency": 0})
    with pytest.raises(ValueError, match="already registered"):
        register_judge("rule")(type("Other", (RuleJudge,), {}))


@dataclass
class ParityJudgeConfig(JudgeConfig):
    name: str = "parity"
    wrong_step: int = 0   # a key no built-in kind has


class ParityJudge(Judge):
    """A user's judge, defined and registered outside judges/: every solution wrong at `wrong_step`."""

    def __init__(self, wrong_step: int):
        self.wrong_step = wrong_step

    @property
    def identity(self) -> str:
        return f"parity:{self.wrong_step}"

    def judge(self, question, steps):
        return Verdict(min(self.wrong_step, len(steps) - 1), cost=Cost(calls=1))

    @classmethod
    def from_config(cls, cfg, **context):
        return cls(cfg.wrong_step)


@pytest.fixture
def parity_registered():
    register_judge("parity", config=ParityJudgeConfig)(ParityJudge)
    yield
    JUDGES.pop("parity")


def test_one_registry_builds_and_validates_a_user_judge(parity_registered):
    judge = make_judge({"name": "parity", "wrong_step": 2})
    assert isinstance(judge, ParityJudge) and judge.judge("q", ["a", "b", "c", "d"]).first_error == 2
    config = validate_judge_config({"name": "parity", "wrong_step": 1, "max_labels": 3})
    assert isinstance(config, ParityJudgeConfig) and (config.wrong_step, config.max_labels) == (1, 3)
    with pytest.raises(ValueError, match="wrong_step"):      # its schema's types hold
        make_judge({"name": "parity", "wrong_step": "second"})
    with pytest.raises(ValueError, match="base_url"):        # another kind's key is refused
        validate_judge_config({"name": "parity", "base_url": "http://x"})
    with pytest.raises(ValueError, match="wrong_step"):      # and its key is refused by the built-in kinds
        validate_judge_config({"name": "rule", "wrong_step": 1})
    with pytest.raises(ValueError, match="'parity' is already registered to ParityJudge"):
        register_judge("parity", config=JudgeConfig)(ParityJudge)   # same class, another schema
    with pytest.raises(ValueError, match="'rule' is already registered to RuleJudge"):
        register_judge("rule", config=ParityJudgeConfig)(ParityJudge)
    register_judge("parity", config=ParityJudgeConfig)(ParityJudge)   # the same entry again: a no-op
    from core.config import validate
    from rl.config import OnlineConfig
    assert validate({"judge": {"name": "parity", "wrong_step": 3}}, OnlineConfig).judge == ParityJudgeConfig(wrong_step=3)


def test_run_bounded_drains_running_items_before_raising():
    done = []

    def work(i):
        if i == 1:
            raise RuntimeError("boom")
        time.sleep(0.05)
        done.append(i)
        return i

    got = []
    with pytest.raises(RuntimeError, match="boom"):
        for i, r in run_bounded(work, range(10), 2):
            got.append(r)
    assert 0 in got and len(done) < 10  # the running one finished and was yielded; no new ones started


# ---- oracle -------------------------------------------------------------------------------------
RECORDS = [{"question": "q1", "steps": ["a", "b"], "first_error": 1},
           {"problem": "q2", "steps": ["c"], "label": -1}]


def test_oracle_reveals_labels_as_paid_calls():
    oracle = OracleJudge(RECORDS)
    v = oracle.judge("q1", ["a", "b"])
    assert (v.first_error, v.cost.calls) == (1, 1)
    assert oracle.judge_batch([("q2", ["c"]), ("q1", ["a", "b"])])[0].first_error == -1
    with pytest.raises(KeyError, match="no label for this item"):
        oracle.judge("q1", ["a", "changed"])
    with pytest.raises(ValueError, match=r"record 1 \(1-based\)"):
        OracleJudge([{"question": "q", "steps": ["a"], "first_error": 3}])


def test_oracle_from_config(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS))
    assert len(make_judge({"name": "oracle", "records_path": str(path)})) == 2
    assert len(make_judge({"name": "oracle"}, records=RECORDS)) == 2
    with pytest.raises(ValueError, match="needs records"):
        make_judge({"name": "oracle"})


# ---- metric -------------------------------------------------------------------------------------
def test_processbench_f1_hand_made():
    # 3 erroneous items, 2 named exactly; 2 correct items, 1 called correct.
    r = processbench_f1([1, 0, 2, -1, 0], [1, 0, 1, -1, -1])
    assert r["acc_error"] == pytest.approx(2 / 3) and r["acc_correct"] == pytest.approx(1 / 2)
    assert r["f1"] == pytest.approx(2 * (2 / 3 * 1 / 2) / (2 / 3 + 1 / 2)) and r["f1"] == pytest.approx(0.5714, abs=1e-4)
    assert r["n"] == 5


def test_processbench_f1_invalid_counts_wrong_and_edges():
    assert processbench_f1([None, -1], [0, -1])["acc_error"] == 0.0
    assert processbench_f1([None, None], [-1, 2])["f1"] == 0.0
    assert math.isnan(processbench_f1([1], [1])["f1"])  # no all-correct item: undefined
    with pytest.raises(ValueError):
        processbench_f1([1], [1, 2])


# ---- critic -------------------------------------------------------------------------------------
def test_critic_prompt_numbers_paragraphs_from_zero():
    p = critic_prompt("What is 1+1?", ["1+1=2", "So 2."])
    assert "<paragraph_0>\n1+1=2\n</paragraph_0>" in p and "<paragraph_1>\nSo 2.\n</paragraph_1>" in p
    assert "\\boxed{-1}" in p and "What is 1+1?" in p


@pytest.mark.parametrize("text,expected", [
    ("\\boxed{2}", 2), ("\\boxed{-1}", -1), ("\\boxed{ 1 }", 1), ("\\boxed{\\text{1}}", 1),
    ("first \\boxed{0}, on reflection \\boxed{1}", 1),
    ("<think>\\boxed{0}</think>\\boxed{2}", 2), ("reasoning \\boxed{0}</think> answer \\boxed{1}", 1),
    ("<think>\\boxed{0}</think> no box after", None), ("<think> unfinished \\boxed{0}", None),
    ("\\boxed{3}", None), ("\\boxed{-2}", None), ("\\boxed{two}", None), ("", None),
    ("Conclusion: Correct", -1), ("**Conclusion:** Incorrect. Earliest error: paragraph_2", 2),
    ("Conclusion: Incorrect", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text, n_steps=3) == expected


# ---- ledger (with a local judge; HTTP judges in test_judges_llm.py) --------------------------------
class CountingJudge(Judge):
    """Answers len(steps) - 2, counts calls, can be slow, and has a settable token cost."""

    def __init__(self, delay=0.0, tokens=0, concurrency=1, fail_on=None):
        self.calls, self.delay, self.tokens, self.max_concurrency = 0, delay, tokens, concurrency
        self.fail_on = fail_on
        self.lock = threading.Lock()

    identity = "counting:v1"

    def token_bound(self, question, steps):
        return self.tokens

    def judge(self, question, steps):
        with self.lock:
            self.calls += 1
        if question == self.fail_on:
            raise RuntimeError("judge down")
        time.sleep(self.delay)
        return Verdict(len(steps) - 2, raw="ok", cost=Cost(1, self.tokens, 0, self.delay))


ITEMS = [(f"q{i}", ["s"] * (i % 3 + 1)) for i in range(6)]  # answers -1, 0, 1, ...


def test_ledger_answers_repeats_without_calls(tmp_path):
    judge = CountingJudge()
    with LabelLedger(tmp_path / "l.sqlite") as ledger:
        first = ledger.label(judge, ITEMS)
        assert [v.first_error for v in first] == [-1, 0, 1, -1, 0, 1] and judge.calls == 6
        again = ledger.label(judge, ITEMS)
        assert judge.calls == 6 and all(v.from_ledger and v.cost == Cost() for v in again)
        assert ledger.get(judge.identity, *ITEMS[2]).first_error == 1
        assert ledger.get("other:v1", *ITEMS[2]) is None  # keyed by judge identity
    with sqlite3.connect(tmp_path / "l.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = db.execute("SELECT judge, item_hash, question, steps, first_error, raw, calls, created_at "
                         "FROM labels WHERE question = 'q2'").fetchone()
    assert row[:7] == ("counting:v1", item_key(*ITEMS[2]), "q2", json.dumps(["s"] * 3), 1, "ok", 1) and row[7]


def test_a_repeat_inside_one_call_is_paid_and_counted_once(tmp_path):
    """An item twice in one call: one judge call, one paid label, its cost once; the copy is a repeat, not a
    ledger hit. A later call finds both copies in the ledger."""
    judge = CountingJudge(tokens=5)
    items = [ITEMS[0], ITEMS[1], ITEMS[0], ITEMS[2], ITEMS[0]]
    with LabelLedger(tmp_path / "l.sqlite") as ledger:
        ledger.label(judge, [ITEMS[2]])
        verdicts = ledger.label(judge, items)
        assert [v.first_error for v in verdicts] == [-1, 0, -1, 1, -1] and judge.calls == 3
        last = ledger.last
        assert (last.paid, last.repeats, last.ledger_hits, last.valid) == (2, 2, 1, 5)
        assert last.cost == Cost(2, 10, 0, 0.0)
        ledger.label(judge, items)
        assert (ledger.last.paid, ledger.last.repeats, ledger.last.ledger_hits, ledger.last.cost) == (0, 0, 5, Cost())


def test_ledger_budget_under_concurrency_is_exact(tmp_path):
    judge = CountingJudge(delay=0.05, concurrency=4)
    items = [(f"q{i}", ["a", "b"]) for i in range(20)]
    with LabelLedger(tmp_path / "l.sqlite", max_labels=7) as ledger:
        verdicts = ledger.label(judge, items)
        assert sum(v is not None for v in verdicts) == 7 == judge.calls == len(ledger)
        assert ledger.remaining() == {"labels": 0, "tokens": None}


def test_two_ledgers_on_one_file_share_the_budget(tmp_path):
    judges_ = [CountingJudge(delay=0.02, concurrency=3), CountingJudge(delay=0.02, concurrency=3)]
    ledgers = [LabelLedger(tmp_path / "l.sqlite", max_labels=10) for _ in range(2)]
    items = [[(f"a{i}", ["x"]) for i in range(10)], [(f"b{i}", ["x"]) for i in range(10)]]
    threads = [threading.Thread(target=ledgers[k].label, args=(judges_[k], items[k])) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert judges_[0].calls + judges_[1].calls == 10 == len(ledgers[0])
    for ledger in ledgers:
        ledger.close()


def test_ledger_token_budget(tmp_path):
    judge = CountingJudge(tokens=100)
    with LabelLedger(tmp_path / "l.sqlite", max_tokens=250) as ledger:
        verdicts = ledger.label(judge, ITEMS)
        assert [v is not None for v in verdicts] == [True, True, False, False, False, False]
        assert ledger.spent()["tokens"] == 200


def test_ledger_keeps_what_was_paid_when_the_judge_fails(tmp_path):
    judge = CountingJudge(fail_on="q3")
    with LabelLedger(tmp_path / "l.sqlite", max_labels=100) as ledger:
        with pytest.raises(RuntimeError, match="judge down"):
            ledger.label(judge, ITEMS)
        assert len(ledger) == 3 and ledger.spent()["labels"] == 3  # q0..q2 kept, q3's reservation released


def test_ledger_stats_and_export(tmp_path):
    class Flaky(CountingJudge):
        identity = "flaky:v1"

        def judge(self, question, steps):
            v = super().judge(question, steps)
            return Verdict(None if question == "q1" else v.first_error, raw="?", cost=v.cost)

    with LabelLedger(tmp_path / "l.sqlite") as ledger:
        ledger.label(CountingJudge(tokens=3), ITEMS[:2])
        ledger.label(Flaky(tokens=5), ITEMS[:3])
        stats = ledger.stats()
        assert stats["counting:v1"]["labels"] == 2 and stats["counting:v1"]["tokens"] == 6
        assert stats["flaky:v1"] == {"labels": 3, "invalid": 1, "calls": 3, "prompt_tokens": 15,
                                     "completion_tokens": 0, "tokens": 15, "seconds": 0.0}
        assert ledger.export_jsonl(tmp_path / "all.jsonl") == 4
        assert ledger.export_jsonl(tmp_path / "flaky.jsonl", judge_identity="flaky:v1") == 2
    rows = [json.loads(x) for x in (tmp_path / "flaky.jsonl").read_text().splitlines()]
    assert rows == [{"question": "q0", "steps": ["s"], "first_error": -1, "source": "ledger:flaky:v1"},
                    {"question": "q2", "steps": ["s"] * 3, "first_error": 1, "source": "ledger:flaky:v1"}]


def test_ledger_from_config(tmp_path):
    cfg = JudgeConfig(ledger_path=str(tmp_path / "x" / "l.sqlite"), max_labels=5, max_total_tokens=9)
    with LabelLedger.from_config(cfg) as ledger:
        assert (ledger.max_labels, ledger.max_tokens) == (5, 9) and ledger.path.exists()


def test_a_sync_judge_allowing_concurrency_runs_that_many_calls_at_once_under_the_ledger(tmp_path):
    class Slow(Judge):
        max_concurrency = 3

        def __init__(self):
            self.running = self.peak = 0
            self.lock = threading.Lock()

        @property
        def identity(self):
            return "slow"

        def judge(self, question, steps):
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            time.sleep(0.1)
            with self.lock:
                self.running -= 1
            return Verdict(-1, cost=Cost(calls=1))

    judge = Slow()
    with LabelLedger(tmp_path / "l.sqlite") as ledger:
        assert all(v.first_error == -1 for v in ledger.label(judge, [(f"q{i}", ["a"]) for i in range(9)]))
    assert judge.peak == 3
