"""The llm judge as users run one, over real HTTP (tests/fake_openai_server.py): a slow critic streams
past the read timeout, a timed-out attempt is charged what it received, an item that keeps failing is
skipped and counted, a restarting server is waited for, a start-up check, budgets that label the same
items at 1/4/16 in flight when first attempts fail, invalid verdicts counted and re-asked, identity
changes explained, and the key kept out of every excerpt, log and stored reply."""
from __future__ import annotations

import json
import logging
import socket
import sqlite3
import threading
import time

import pytest

from judges import (JudgeAuthError, JudgeEndpointError, JudgeError, JudgeRequestError, JudgeUnavailableError,
                    LabelLedger)
from tests.fake_openai_server import FakeOpenAIServer, Reply, free_port
from tests.guards import no_hang
from tests.test_judges_llm import SECRET, STEPS, llm  # one judge factory for the llm judge's tests


def item_of(req) -> int:
    return int(req.prompt.split("item-")[1].split()[0])


# ---- streaming ----------------------------------------------------------------------------------
def test_requests_are_streamed_with_usage_and_a_system_turn():
    with FakeOpenAIServer([Reply("\\boxed{1}", prompt_tokens=321, completion_tokens=17)]) as server:
        v = llm(server).judge("q", STEPS)
    body = server.requests[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]  # not the server's default system prompt
    assert v.first_error == 1 and (v.cost.calls, v.cost.prompt_tokens, v.cost.completion_tokens) == (1, 321, 17)


def test_a_slow_critic_streams_past_the_read_timeout():
    # 17 events 0.1 s apart: the critique takes 1.7 s, no read waits more than 0.1 s. Not streamed, the
    # server would say nothing for 1.7 s and every attempt would hit timeout_s.
    content = "Paragraph 0 holds. Paragraph 1 is wrong. \\boxed{1}"
    with FakeOpenAIServer([Reply(content, token_s=0.1, chunk_chars=4)]) as server, no_hang("judge call", 60):
        v = llm(server, timeout_s=0.5, max_retries=0).judge("q", STEPS)
    assert v.first_error == 1 and len(server.requests) == 1


def test_a_timed_out_stream_is_charged_what_it_received_and_the_item_is_skipped(tmp_path):
    content = "x" * 400 + " \\boxed{1}"
    script = [Reply(content, token_s=0.05)]
    with FakeOpenAIServer(script) as server, LabelLedger(tmp_path / "l.sqlite", on_failure="skip") as ledger:
        judge = llm(server, deadline_s=0.6, max_retries=0, max_tokens=4096)
        bound = judge.token_bound("q", STEPS)
        assert ledger.label(judge, [("q", STEPS)]) == [None]
        assert ledger.last.failed == 1 and ledger.last.refused_budget == 0
        spent = ledger.spent()
        received = spent["tokens"] - (bound - judge.max_tokens)  # the prompt's bound + the text received
        assert spent["calls"] == 1 and 0 < received < len(content.encode())  # cut short: not the whole reply


def test_a_request_that_never_left_is_not_charged(tmp_path):
    # A listener whose backlog is full: the TCP handshake never completes (a connect timeout)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    try:
        with LabelLedger(tmp_path / "l.sqlite") as ledger:
            judge = llm(f"http://127.0.0.1:{port}/v1", timeout_s=0.3, max_retries=1)
            with pytest.raises(JudgeError):
                ledger.label(judge, [("q", STEPS)])
            assert ledger.spent()["tokens"] == 0 and ledger.spent()["calls"] == 0
    finally:
        for s in [*fillers, listener]:
            s.close()


def test_the_deadline_ends_a_request_to_a_server_that_holds_the_connection(tmp_path):
    # Accepts, reads the request, never answers (a server told to stop that keeps its connections)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(listener.accept()[0]) for _ in range(2)], daemon=True).start()
    try:
        with LabelLedger(tmp_path / "l.sqlite") as ledger, no_hang("judge call", 30):
            judge = llm(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", timeout_s=60, deadline_s=0.5,
                        max_retries=1)
            with pytest.raises(JudgeUnavailableError, match="deadline_s=0.5"):
                ledger.label(judge, [("q", STEPS)])
            # nothing streamed back: each attempt is charged its prompt's bound, not max_tokens on top
            prompt_bound = judge.token_bound("q", STEPS) - judge.max_tokens
            assert ledger.spent()["calls"] == 2 and ledger.spent()["tokens"] == 2 * prompt_bound
    finally:
        for s in [*held, listener]:
            s.close()


# ---- an item that keeps failing; a server that restarts -------------------------------------------
@pytest.mark.parametrize("on_failure", ["skip", "stop"])
def test_an_item_that_keeps_failing_is_skipped_and_counted_or_stops(tmp_path, on_failure):
    def script(req):
        return Reply(status=500, body="{}") if item_of(req) == 1 else Reply("\\boxed{0}")
    items = [(f"item-{i}", STEPS) for i in range(4)]
    with FakeOpenAIServer(script) as server, LabelLedger(tmp_path / "l.sqlite", on_failure=on_failure) as ledger:
        judge = llm(server, max_retries=1, max_concurrency=1)
        if on_failure == "stop":
            with pytest.raises(JudgeUnavailableError):
                ledger.label(judge, items)
            return
        verdicts = ledger.label(judge, items)
    assert [v is not None for v in verdicts] == [True, False, True, True]
    assert ledger.last.failed == 1 and ledger.last.refused_budget == 0 and ledger.last.paid == 3


def test_wait_s_rides_out_a_restarting_server(caplog):
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeEndpointError):  # nothing listens and nobody waits
        llm(url, max_retries=0).judge("q", STEPS)
    started: list[FakeOpenAIServer] = []

    def come_back() -> None:
        time.sleep(1.0)
        started.append(FakeOpenAIServer([Reply("\\boxed{0}")], port=port).__enter__())
    thread = threading.Thread(target=come_back)
    thread.start()
    caplog.set_level(logging.WARNING, logger="judges.chat_client")
    try:
        with no_hang("judge call", 60):
            v = llm(url, max_retries=0, wait_s=30, backoff_max_s=0.2).judge("q", STEPS)
    finally:
        thread.join()
        for server in started:
            server.__exit__()
    assert v.first_error == 0 and "waiting for it" in caplog.text and "wait_s=30" in caplog.text


# ---- start-up check -----------------------------------------------------------------------------
def test_start_up_check_names_the_served_models_a_refused_key_and_a_dead_endpoint(monkeypatch):
    monkeypatch.setenv("PRMLOOP_TEST_JUDGE_KEY", "right-key")
    with FakeOpenAIServer([Reply("\\boxed{-1}", prompt_tokens=20, completion_tokens=1)]) as server:
        cost = llm(server).check()
        assert cost.calls == 1 and cost.tokens == 21 and server.requests[0].body["max_tokens"] == 1
        with pytest.raises(JudgeRequestError, match=r"judge.model='default'.*\['critic'\]"):
            llm(server, model="default").check()
        server.require_key = "another-key"
        with pytest.raises(JudgeAuthError, match="PRMLOOP_TEST_JUDGE_KEY") as err:
            llm(server).check()
        assert "right-key" not in str(err.value) and len(server.requests) == 1
    with pytest.raises(JudgeEndpointError, match="is the server running"):
        llm(f"http://127.0.0.1:{free_port()}/v1").check()


def test_rl_online_checks_the_judge_before_any_model_loads(tmp_path, monkeypatch):
    import rl.online
    from tests.test_rl_loop import tiny_config

    def no_policy(*a, **k):
        raise AssertionError("the policy was built before the judge was checked")
    monkeypatch.setattr("rl.policy.PolicyTrainer", no_policy)
    with FakeOpenAIServer() as server:
        server.served = ["smollm2"]
        cfg = tiny_config(tmp_path, judge={"name": "llm", "base_url": server.base_url, "model": "qwq"})
        with pytest.raises(JudgeRequestError, match="smollm2"):
            rl.online.build(cfg)
        assert len(server.requests) == 0


# ---- budgets at any concurrency when first attempts fail ----------------------------------------
def test_a_token_cap_labels_the_same_items_at_1_4_and_16_in_flight(tmp_path):
    items = [(f"item-{i}", STEPS) for i in range(12)]
    labelled = {}
    for concurrency in (1, 4, 16):
        seen: dict[int, int] = {}
        lock = threading.Lock()

        def garbage_first(req):  # every item's first answer is unreadable; the retry is right
            with lock:
                seen[item_of(req)] = seen.get(item_of(req), 0) + 1
                first = seen[item_of(req)] == 1
            return Reply(body="garbage") if first else Reply("\\boxed{0}", prompt_tokens=200, completion_tokens=10)
        with FakeOpenAIServer(garbage_first) as server, \
                LabelLedger(tmp_path / f"c{concurrency}.sqlite", max_tokens=8000) as ledger:
            verdicts = ledger.label(llm(server, max_tokens=400, max_concurrency=concurrency), items)
            labelled[concurrency] = [v is not None for v in verdicts]
            assert ledger.spent()["tokens"] <= 8000
    assert labelled[1] == labelled[4] == labelled[16] and 0 < sum(labelled[1]) < 12


# ---- invalid verdicts: counted, re-asked on request; identity changes explained -------------------
def test_invalid_verdicts_are_counted_apart_and_reasked_on_request(tmp_path):
    with FakeOpenAIServer([Reply("I cannot tell."), Reply("\\boxed{1}")]) as server:
        judge = llm(server)
        with LabelLedger(tmp_path / "l.sqlite") as ledger:
            [first] = ledger.label(judge, [("q", STEPS)])
            assert first.first_error is None and ledger.last.invalid == 1 and ledger.last.paid == 1
            [again] = ledger.label(judge, [("q", STEPS)])
            assert again.from_ledger and ledger.last.ledger_hits == 1 and len(server.requests) == 1
        with LabelLedger(tmp_path / "l.sqlite", reask_invalid=True) as ledger:
            [asked] = ledger.label(judge, [("q", STEPS)])
            assert asked.first_error == 1 and not asked.from_ledger and len(server.requests) == 2
            rows = ledger.rows(judge.identity)
            assert [r[3] for r in rows] == [1] and rows[0][0] > 1  # a new row: replay readers see it
            assert ledger.spent()["labels"] == 2  # both were paid


def test_an_identity_change_that_repays_labels_is_explained(tmp_path, caplog):
    from judges.session import explain_identity
    with FakeOpenAIServer() as server, LabelLedger(tmp_path / "l.sqlite") as ledger:
        ledger.label(llm(server, max_tokens=4096), [("q", STEPS)])
        assert explain_identity(llm(server, max_tokens=4096).identity, ledger) == []
        caplog.set_level(logging.WARNING)
        [line] = explain_identity(llm(server, max_tokens=1024).identity, ledger)
    assert "max_tokens: 4096 -> 1024" in line and "paid again" in line and "1 labels" in line
    assert line in caplog.text


# ---- secrets at the edges; quiet HTTP logging ----------------------------------------------------
def test_a_key_straddling_the_excerpt_edge_leaks_no_piece(monkeypatch, caplog):
    monkeypatch.setenv("PRMLOOP_TEST_JUDGE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer([Reply(status=500, body="x" * 290 + SECRET)]) as server:
        with pytest.raises(JudgeUnavailableError) as err:
            llm(server, max_retries=1).judge("q", STEPS)
    for text in (str(err.value), caplog.text):
        assert SECRET[:8] not in text


def test_a_key_echoed_json_escaped_is_redacted(monkeypatch, caplog):
    key = 'sk-"quoted"-key-0123456789'
    monkeypatch.setenv("PRMLOOP_TEST_JUDGE_KEY", key)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer([Reply(status=400, body=json.dumps({"error": f"bad key {key}"}))]) as server:
        with pytest.raises(JudgeRequestError) as err:
            llm(server).judge("q", STEPS)
    for text in (str(err.value), caplog.text):
        assert json.dumps(key)[1:-1] not in text and key not in text and "quoted" not in text


def test_a_reply_echoing_the_key_is_stored_without_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PRMLOOP_TEST_JUDGE_KEY", SECRET)
    with FakeOpenAIServer([Reply(f"Authorization: Bearer {SECRET} \\boxed{{1}}")]) as server, \
            LabelLedger(tmp_path / "l.sqlite") as ledger:
        [v] = ledger.label(llm(server), [("q", STEPS)])
    assert v.first_error == 1 and SECRET not in v.raw
    with sqlite3.connect(tmp_path / "l.sqlite") as db:
        assert not any(SECRET in str(cell) for row in db.execute("SELECT * FROM labels") for cell in row)


def test_http_requests_are_not_logged_one_line_each(caplog):
    caplog.set_level(logging.INFO)
    with FakeOpenAIServer() as server:
        llm(server).judge("q", STEPS)
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "httpcore"))]


def test_judge_seconds_is_wall_clock_not_the_sum_of_requests_in_flight(tmp_path):
    from judges.eval import evaluate_subset
    rows = [{"problem": f"p{i}", "steps": STEPS, "label": -1} for i in range(8)]
    with FakeOpenAIServer([Reply("\\boxed{-1}", delay_s=0.5)]) as server, LabelLedger(tmp_path / "l.sqlite") as ledger:
        report = evaluate_subset(llm(server, max_concurrency=8), ledger, rows, "gsm8k")
        request_seconds = ledger.stats()[llm(server).identity]["seconds"]
    assert request_seconds >= 8 * 0.5  # the server held each of the 8 requests 0.5 s, all at once
    assert report["judge_seconds"] < request_seconds / 2  # one wave waited for, not eight


def test_a_stream_folds_both_reasoning_fields():
    from judges.chat_stream import StreamState
    from judges.llm import reply_text
    state = StreamState()
    for delta in ({"reasoning": "vLLM names it reasoning; "}, {"reasoning_content": "others reasoning_content"},
                  {"content": "\\boxed{1}"}):
        state.feed("data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}))
    state.feed("data: [DONE]")
    assert state.finished and reply_text(state.body()) == (
        "<think>vLLM names it reasoning; others reasoning_content</think>\\boxed{1}")


def test_an_error_inside_a_stream_is_retried_and_charged_what_arrived(tmp_path):
    # vLLM reports an engine failure mid-generation as an `error` event in a 200 stream
    script = [Reply("partial critique", stream_error="EngineCore encountered an issue"), Reply("\\boxed{2}")]
    with FakeOpenAIServer(script) as server, LabelLedger(tmp_path / "l.sqlite") as ledger:
        judge = llm(server)
        [v] = ledger.label(judge, [("q", STEPS)])
        prompt_bound = judge.token_bound("q", STEPS) - judge.max_tokens
    assert v.first_error == 2 and len(server.requests) == 2
    assert v.cost.tokens == prompt_bound + len("partial critique") + 100 + 10
