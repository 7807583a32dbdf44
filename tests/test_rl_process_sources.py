"""The process sources and credit forms inside the online loop (tiny-random-llama), and the trace error."""
import math
from types import SimpleNamespace

import pytest

from core.models import load_model
from core.steps import split_steps
from rl.algos import step_end_tokens
from rl.config import AlgoConfig, OnlineConfig, SelectConfig
from rl.loop import Attempt, trace_error
from rl.online import run
from rl.process import process_source
from rl.rollout import Completion
from tests.test_rl_loop import assert_same, tiny_config


def test_trace_error_is_the_share_of_passed_solutions_with_a_wrong_step():
    assert trace_error([True, True, False, True], [True, False, True, False]) == pytest.approx(1 / 3)
    assert math.isnan(trace_error([False, False], [True, False]))          # nothing passed
    assert math.isnan(trace_error([True], [None]))                         # no exact step rule


def test_process_source_puts_each_form_at_the_step_ends():
    """rl.process.process_source: the PRM's step means (or the judge's labels) under the credit form, at each
    step's last token."""
    tok = load_model("tiny-random-llama", "fp32")[1]
    text = "3 + 4 = 7\n\n7 * 2 = 14\n\nThe answer is 14."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    steps = split_steps(text)
    r = Attempt(0, "What is (3 + 4) * 2?", "14", "p", Completion(text, ids, [0.0] * len(ids), "stop", 0), steps,
                mean=[.9, .3, .6], first_error=1)
    ends = step_end_tokens(tok, ids, text, steps)

    def source(form, kind="prm"):
        cfg = OnlineConfig(algo=AlgoConfig(process_credit=form, min_temperature=0.0, process_source=kind),
                           select=SelectConfig(mode="all"), schedule="serial")
        loop = SimpleNamespace(cfg=cfg, tok=tok, learner=object(), implicit=None)
        (values, positions), _ = process_source(loop, [r])
        assert positions == [ends] and len(set(ends)) == 3
        return values[0].tolist()
    assert source("sum") == pytest.approx([.9, .3, .6])
    assert source("min") == pytest.approx([0., .3, 0.])
    assert source("first_error") == pytest.approx([0., -1., 0.])
    assert source("sum", "judge") == [1., 0., 0.] and source("first_error", "judge") == [0., -1., 0.]


def test_credit_forms_and_the_scale_in_the_loop(tmp_path):
    """PRM step rewards on the same rollouts. The tiny random policy writes one step and passes nothing:
    first_error differs from sum, and algo.process_scale=s can only multiply the process advantages by s (the
    outcome's are 0; the process-to-outcome size is logged as nan)."""
    def first_round(name, **algo):
        return run(tiny_config(tmp_path / name, rounds=1, mode="all", algo={"advantage": "rloo", **algo}))[0]
    runs = {form: first_round(form, process_credit=form) for form in ("sum", "first_error")}
    assert runs["sum"]["rollout/steps_mean"] == 1.0 and runs["sum"]["pass_rate"] == 0.0
    assert runs["first_error"]["algo/adv_abs_mean"] != pytest.approx(runs["sum"]["algo/adv_abs_mean"], rel=1e-3)
    scaled = first_round("scaled", process_scale=0.5)
    assert scaled["algo/adv_abs_mean"] == pytest.approx(0.5 * runs["sum"]["algo/adv_abs_mean"], rel=1e-5)
    assert math.isnan(scaled["algo/process_to_outcome"])
    assert "trace_error" not in runs["sum"]                                  # arithmetic: no free exact step rule


def test_implicit_source_learns_each_round_and_resumes_exactly(tmp_path):
    """PRIME's implicit PRM needs no PRM or judge; its weights and optimizer are in the round checkpoint."""
    def config(name):
        return tiny_config(tmp_path / name, mode="none", prm_update="none",
                           algo={"advantage": "rloo", "process_source": "implicit", "implicit_lr": 1e-3})
    full = run(config("a"))
    assert all("implicit/loss" in m for m in full) and full[0]["judge/calls"] == 0
    run(config("b"), stop_after=1)
    assert (tmp_path / "b" / "checkpoints" / "round_0001" / "implicit" / "model.safetensors").is_file()
    resumed = run(config("b"))
    assert_same(full[1], resumed[1])


def test_orm_source_trains_on_the_judged_outcomes(tmp_path):
    cfg = tiny_config(tmp_path / "orm", rounds=1, mode="all", algo={"process_source": "orm"})
    metrics = run(cfg)[0]
    assert metrics["judge/labels"] > 0 and metrics["prm/trained"] > 0 and metrics["algo/process_weight"] == 1.0
