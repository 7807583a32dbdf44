"""The llm judge and the ledger under faults, over real HTTP on 127.0.0.1 (tests/fake_openai_server.py):
every attempt billed, odd 200 shapes recorded, budgets exact at any concurrency, a dripping server
bounded by the deadline, requests in flight and kept-alive connections."""
from __future__ import annotations

import json
import math
import sqlite3

import pytest

from judges import JudgeAuthError, JudgeUnavailableError, LabelLedger, LLMJudge
from tests.guards import no_hang
from tests.fake_openai_server import FakeOpenAIServer, Reply

STEPS = ["2 + 2 = 4", "4 * 3 = 12", "So the answer is 12."]


def llm(server, **kw) -> LLMJudge:
    defaults = dict(model="critic", max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5,
                    max_tokens=32, api_key_env="PRMLOOP_TEST_JUDGE_KEY")
    return LLMJudge(server.base_url, **{**defaults, **kw})


def charges(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT label, calls, prompt_tokens, completion_tokens FROM charges ORDER BY id").fetchall()


# ---- every attempt billed ---------------------------------------------------------------------
def test_every_retried_attempt_is_billed(tmp_path):
    # a stream that never started (its prompt may have been read), a 200 that is not JSON and a JSON
    # body cut mid-way (both may have generated up to max_tokens) may all have been billed by a provider
    script = [Reply(delay_s=2), Reply(body="<html>oops"), Reply("\\boxed{1}", cut=True, stream=False),
              Reply("\\boxed{1}", prompt_tokens=100, completion_tokens=10)]
    with FakeOpenAIServer(script) as server, LabelLedger(tmp_path / "l.sqlite") as ledger:
        judge = llm(server, timeout_s=0.3)
        bound = judge.token_bound("q", STEPS)
        [verdict] = ledger.label(judge, [("q", STEPS)])
        assert len(server.requests) == 4
        assert verdict.first_error == 1 and verdict.cost.calls == 4
        expected = (bound - judge.max_tokens) + 2 * bound + 110  # unknown usage: the bound of what it may be
        assert verdict.cost.tokens == expected
        assert ledger.spent()["calls"] == 4 and ledger.spent()["tokens"] == expected
        assert ledger.stats()[judge.identity]["calls"] == 4
    assert [row[0] for row in charges(tmp_path / "l.sqlite")] == [0, 0, 0, 1]


def test_error_statuses_are_billed_as_calls_without_tokens(tmp_path):
    with FakeOpenAIServer([Reply(status=503, body="{}")]) as server, LabelLedger(tmp_path / "l.sqlite") as ledger:
        with pytest.raises(JudgeUnavailableError):
            ledger.label(llm(server, max_retries=2), [("q", STEPS)])
        assert ledger.spent() == {"labels": 0, "tokens": 0, "calls": 3, "committed_labels": 0, "committed_tokens": 0}


@pytest.mark.parametrize("usage", [{"prompt_tokens": "100", "completion_tokens": 10},
                                   {"prompt_tokens": -499_900, "completion_tokens": 10},
                                   {"prompt_tokens": 1.5, "completion_tokens": 10},
                                   "100 tokens", None])
def test_unusable_usage_is_billed_at_the_bound(tmp_path, usage):
    body = {"choices": [{"message": {"content": "\\boxed{0}"}}], "usage": usage}
    with FakeOpenAIServer([Reply(body=json.dumps(body))]) as server, \
            LabelLedger(tmp_path / "l.sqlite", max_tokens=10_000) as ledger:
        judge = llm(server)
        bound = judge.token_bound("q", STEPS)
        [verdict] = ledger.label(judge, [("q", STEPS)])
        assert verdict.first_error == 0 and verdict.cost.tokens == bound
        assert ledger.spent()["tokens"] == bound  # a negative count cannot lift the cap


def test_usage_above_the_cap_stops_further_requests(tmp_path):
    items = [(f"q{i}", STEPS) for i in range(5)]
    with FakeOpenAIServer([Reply(prompt_tokens=400_000, completion_tokens=80)]) as server, \
            LabelLedger(tmp_path / "l.sqlite", max_tokens=10_000) as ledger:
        verdicts = ledger.label(llm(server, max_concurrency=1), items)
        assert len(server.requests) == 1 and verdicts[1:] == [None] * 4
        assert ledger.spent()["tokens"] == 400_080  # the truth is recorded ...
        assert ledger.label(llm(server), [("another", STEPS)]) == [None] and len(server.requests) == 1  # ... and stops


# ---- odd 200 shapes: a verdict or a recorded invalid verdict, never a crash ------------------------
ODD_BODIES = {
    "content parts": ({"choices": [{"message": {"content": [{"type": "text", "text": "It is \\boxed{"},
                                                            {"type": "text", "text": "2}"}]}}],
                       "usage": {"prompt_tokens": 50, "completion_tokens": 5}}, 2),
    "usage a string": ({"choices": [{"message": {"content": "\\boxed{-1}"}}], "usage": "lots"}, -1),
    "prompt_tokens a string": ({"choices": [{"message": {"content": "\\boxed{1}"}}],
                                "usage": {"prompt_tokens": "50", "completion_tokens": 5}}, 1),
    "choices of strings": ({"choices": ["\\boxed{1}"], "usage": {"prompt_tokens": 50, "completion_tokens": 5}}, None),
    "message a list": ({"choices": [{"message": ["\\boxed{1}"]}]}, None),
    "content a number": ({"choices": [{"message": {"content": 7}}]}, None),
    "empty choices": ({"choices": []}, None),
}


@pytest.mark.parametrize("name", list(ODD_BODIES))
def test_odd_200_shapes_end_as_recorded_verdicts(tmp_path, name):
    body, expected = ODD_BODIES[name]
    with FakeOpenAIServer([Reply(body=json.dumps(body))]) as server, LabelLedger(tmp_path / "l.sqlite") as ledger:
        judge = llm(server)
        [verdict] = ledger.label(judge, [("q", STEPS)])
        assert verdict.first_error == expected and verdict.cost.calls == 1
        assert len(server.requests) == 1  # a well-formed JSON reply is not asked again
        [again] = ledger.label(judge, [("q", STEPS)])
        assert again.from_ledger and again.first_error == expected and len(server.requests) == 1
        assert ledger.spent()["labels"] == 1


def test_unreadable_200_after_every_retry_is_an_invalid_verdict_with_its_cost(tmp_path):
    with FakeOpenAIServer([Reply(body="not json at all")]) as server, LabelLedger(tmp_path / "l.sqlite") as ledger:
        judge = llm(server, max_retries=2)
        [verdict] = ledger.label(judge, [("q", STEPS)])
        assert verdict.first_error is None and "not json at all" in verdict.raw
        assert verdict.cost.calls == 3 and len(ledger) == 1 and ledger.spent()["calls"] == 3


# ---- deadlines ----------------------------------------------------------------------------------
def test_a_dripping_server_is_bounded_by_the_deadline():
    # one byte every 0.2 s keeps every socket read under timeout_s; only the total deadline ends it
    with FakeOpenAIServer([Reply(drip_s=0.2)]) as server, no_hang("judge call", 30):
        with pytest.raises(JudgeUnavailableError, match="deadline_s=1.0"):
            llm(server, timeout_s=5, deadline_s=1.0, max_retries=1).judge("q", STEPS)
        assert len(server.requests) == 2


def test_read_timeout_and_deadline_are_separate_settings():
    with FakeOpenAIServer([Reply(delay_s=3)]) as server, no_hang("judge call", 30):
        with pytest.raises(JudgeUnavailableError, match="timeout_s=0.3"):
            llm(server, timeout_s=0.3, deadline_s=60, max_retries=0).judge("q", STEPS)


# ---- budgets at any concurrency -----------------------------------------------------------------
def uneven(req) -> Reply:
    """Usage varies by item, so which items a token budget admits depends on the order of admission."""
    i = int(req.prompt.split("item-")[1].split()[0])
    return Reply(f"\\boxed{{{i % 3 - 1}}}", delay_s=0.05 * (7 - i % 7), prompt_tokens=200 + 150 * (i % 5),
                 completion_tokens=10)


@pytest.mark.parametrize("budget", [{"max_tokens": 3000}, {"max_labels": 6}, {"max_tokens": 4000, "max_labels": 5}])
def test_budgets_label_the_same_items_at_concurrency_1_and_8(tmp_path, budget):
    items = [(f"item-{i}", STEPS) for i in range(12)]
    labelled = {}
    for concurrency in (1, 8):
        with FakeOpenAIServer(uneven) as server, \
                LabelLedger(tmp_path / f"c{concurrency}.sqlite", **budget) as ledger:
            verdicts = ledger.label(llm(server, max_tokens=400, max_concurrency=concurrency), items)
            labelled[concurrency] = [v is not None for v in verdicts]
            assert len(server.requests) == sum(labelled[concurrency])  # nothing paid and thrown away
            spent = ledger.spent()
            assert spent["tokens"] <= budget.get("max_tokens", math.inf)
            assert spent["labels"] <= budget.get("max_labels", math.inf)
    assert labelled[1] == labelled[8] and 0 < sum(labelled[1]) < len(items)


# ---- requests in flight, kept-alive connections -------------------------------------------------
def test_requests_in_flight_reach_the_setting_over_kept_alive_connections(tmp_path):
    # N items at C in flight: the server sees C at once at its peak, so N items take ceil(N / C) waves
    n, c = 24, 8
    with FakeOpenAIServer([Reply(delay_s=0.3)]) as server, LabelLedger(tmp_path / "l.sqlite") as ledger:
        verdicts = ledger.label(llm(server, max_concurrency=c), [(f"q{i}", STEPS) for i in range(n)])
    assert all(v.first_error == -1 for v in verdicts)
    assert server.max_in_flight == c and len(server.requests) == n
    assert len(server.connections) <= c  # connections are reused across waves, not one per request


def test_a_key_with_a_newline_inside_fails_at_start_up_naming_the_variable(monkeypatch):
    monkeypatch.setenv("PRMLOOP_TEST_JUDGE_KEY", "sk-abc\ndef")
    with pytest.raises(JudgeAuthError, match=r"\$PRMLOOP_TEST_JUDGE_KEY") as err:
        LLMJudge("http://127.0.0.1:1/v1", api_key_env="PRMLOOP_TEST_JUDGE_KEY")
    assert "sk-abc" not in str(err.value)


def test_a_trailing_newline_is_stripped_from_the_key(monkeypatch):
    monkeypatch.setenv("PRMLOOP_TEST_JUDGE_KEY", "sk-abc\r\n")
    with FakeOpenAIServer() as server:
        assert llm(server).judge("q", STEPS).first_error == -1
        assert server.requests[0].headers["Authorization"] == "Bearer sk-abc"


# ---- reservations are leases ----------------------------------------------------------------------
def test_a_reservation_left_by_another_host_expires_by_lease(tmp_path):
    import time
    from judges.base import item_key
    with FakeOpenAIServer() as server, LabelLedger(tmp_path / "l.sqlite", max_labels=1) as ledger:
        judge = llm(server)
        with sqlite3.connect(tmp_path / "l.sqlite") as conn:  # a process on another machine died holding it
            conn.execute("INSERT INTO reservations (judge, item_hash, tokens, host, pid, created_at, expires_at)"
                         " VALUES (?, ?, 0, 'elsewhere', 1, ?, ?)",
                         (judge.identity, item_key("q", STEPS), time.time(), time.time() + 0.6))
        with no_hang("judge call", 30):
            [verdict] = ledger.label(judge, [("q", STEPS)])
        assert verdict.first_error == -1 and len(server.requests) == 1 and ledger.spent()["labels"] == 1


def test_a_live_holder_renews_its_lease_and_a_second_caller_reads_its_label(tmp_path):
    import threading
    import time
    with FakeOpenAIServer([Reply("\\boxed{2}", delay_s=1.5)]) as server:
        results = {}

        def run(name: str) -> None:
            with LabelLedger(tmp_path / "l.sqlite", lease_s=0.3) as ledger:  # the call outlives 5 leases
                results[name] = ledger.label(llm(server), [("q", STEPS)])[0]
        first = threading.Thread(target=run, args=("first",))
        first.start()
        while not server.requests:
            time.sleep(0.01)
        run("second")
        first.join()
    assert len(server.requests) == 1
    assert results["first"].first_error == results["second"].first_error == 2 and results["second"].from_ledger


def test_a_retry_the_token_budget_cannot_cover_is_not_made(tmp_path):
    with FakeOpenAIServer([Reply(body="garbage"), Reply("\\boxed{0}")]) as server:
        judge = llm(server)
        bound = judge.token_bound("q", STEPS)
        with LabelLedger(tmp_path / "l.sqlite", max_tokens=bound + 100) as ledger:  # room for one attempt
            assert ledger.label(judge, [("q", STEPS)]) == [None]
            assert len(server.requests) == 1  # the unreadable 200 was charged its bound: no second try
            assert ledger.spent()["tokens"] == bound and ledger.spent()["calls"] == 1 and len(ledger) == 0
