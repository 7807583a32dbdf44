"""The policy's held-out pass rate (rl/evaluate.py, setting group `eval`)."""
import json
import re
from types import SimpleNamespace

import pytest

from core.answers import AnswerChecker
from core.config import ConfigError
from core.distributed import Ranks
from rl.config import OnlineConfig, PolicyEvalConfig, TaskConfig
from rl.evaluate import due, eval_problems, evaluate_policy, held_out, training_problems
from rl.online import run
from rl.rollout import Completion
from tasks.problems import Problem
from tasks.registry import Task, chain_first_error
from tests.test_rl_loop import tiny_config


class ScriptedRollout:
    """Answers each prompt with the scripted texts: sampled (temperature > 0) or greedy; records the calls."""

    def __init__(self, sampled: dict[str, list[str]], greedy: dict[str, str]):
        self.sampled, self.greedy, self.calls = sampled, greedy, []

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, stop=None, seeds=None):
        self.calls.append((list(prompts), n, temperature, seeds))
        texts = [self.sampled[p][:n] if temperature > 0 else [self.greedy[p]] for p in prompts]
        return [[Completion(t, [1] * len(t.split()), [0.0] * len(t.split()), "stop", 0) for t in group]
                for group in texts]   # one token a word

    def sleep(self):
        pass


def scripted_task(first_error=None) -> Task:
    task = Task("scripted", [], "", first_error=first_error)
    task.prompt = lambda tok, q: q   # the prompt is the question itself
    return task


def fake_loop(rollout, world=1, rank=0, every=1, greedy=True, n=2, task=None):
    cfg = OnlineConfig(policy_eval=PolicyEvalConfig(every=every, n=n, greedy=greedy))
    task = task or scripted_task()
    ranks = Ranks(rank=rank, world=world)
    ranks.gather = lambda obj: [obj] * world   # every rank saw the same counts (a symmetric fake)
    return SimpleNamespace(cfg=cfg, rollout=rollout, task=task, tok=None, ranks=ranks, checker=AnswerChecker(),
                           policy=SimpleNamespace(version=7))


PROBLEMS = [Problem("What is 2 + 3?", "5"), Problem("What is 4 * 4?", "16"), Problem("What is 9 - 1?", "8")]
SAMPLED = {"What is 2 + 3?": ["The answer is 5.", "The answer is 6."],
           "What is 4 * 4?": ["The answer is 16.", "The answer is 16."],
           "What is 9 - 1?": ["The answer is 7.", "no answer"]}
GREEDY = {"What is 2 + 3?": "The answer is 5.", "What is 4 * 4?": "The answer is 15.", "What is 9 - 1?": "The answer is 8."}


def test_pass_rates_count_verified_answers():
    loop = fake_loop(ScriptedRollout(SAMPLED, GREEDY))
    out = evaluate_policy(loop, PROBLEMS)
    assert out["eval/pass"] == pytest.approx(3 / 6)          # 5, 16, 16 of six samples
    assert out["eval/pass_greedy"] == pytest.approx(2 / 3)   # 5 and 8 of three greedy answers
    assert out["eval/policy_version"] == 7 and out["eval/problems"] == 3 and out["eval/samples"] == 6
    assert out["eval/tokens"] == pytest.approx((5 * 4 + 2) / 6)  # sampled only: five 4-word answers, "no answer"
    sampled_call, greedy_call = loop.rollout.calls
    assert sampled_call[1] == 2 and greedy_call[1:3] == (1, 0.0)


def test_trace_error_counts_sampled_passes_with_a_wrong_step():
    """A chain task's own rule finds the wrong steps; a right answer reached through one counts, a wrong answer
    does not; a task without a rule logs none."""
    q = "What is (5 + 8) + 1?"
    sampled = {q: ["5 + 8 = 13\n\n13 + 1 = 14\n\nThe answer is 14.", "5 + 8 = 3\n\n3 + 1 = 14\n\nThe answer is 14.",
                   "5 + 8 = 3\n\n3 + 1 = 4\n\nThe answer is 4.", "5 + 8 = 3\n\n3 + 1 = 14\n\nThe answer is 14."]}
    chain = scripted_task(chain_first_error)
    rows, plain = [], []
    out = evaluate_policy(fake_loop(ScriptedRollout(sampled, {}), greedy=False, n=4, task=chain), [Problem(q, "14")],
                          rows)
    assert out["eval/pass"] == pytest.approx(3 / 4) and out["eval/trace_error"] == pytest.approx(2 / 3)
    assert [(r["right"], r["passed_wrong_step"]) for r in rows] == [(3, 2)]   # the count behind it, per problem
    assert "eval/trace_error" not in evaluate_policy(fake_loop(ScriptedRollout(SAMPLED, GREEDY)), PROBLEMS, plain)
    assert not any("passed_wrong_step" in r for r in plain)


def test_seeds_depend_only_on_the_run_seed_and_the_problem():
    """Two evaluations (any rounds, and two arms with one trainer.seed) draw from the same generators."""
    a, b = ScriptedRollout(SAMPLED, GREEDY), ScriptedRollout(SAMPLED, GREEDY)
    evaluate_policy(fake_loop(a), PROBLEMS)
    evaluate_policy(fake_loop(b), PROBLEMS)
    assert a.calls[0][3] == b.calls[0][3] and len(set(a.calls[0][3])) == 3


def test_ranks_evaluate_a_strided_share():
    rollout = ScriptedRollout(SAMPLED, GREEDY)
    evaluate_policy(fake_loop(rollout, world=2, rank=1, greedy=False), PROBLEMS)
    assert rollout.calls[0][0] == ["What is 4 * 4?"]    # rank 1 of 2: problem index 1 only


def test_due_rounds():
    cfg = OnlineConfig(rounds=12, policy_eval=PolicyEvalConfig(every=5))
    assert [k for k in range(13) if due(cfg, k)] == [0, 5, 10, 12]
    assert not any(due(OnlineConfig(rounds=3), k) for k in range(4))   # every=0: off


def test_eval_problems_are_disjoint_from_training():
    cfg = OnlineConfig(task=TaskConfig(name="chain", size=50), policy_eval=PolicyEvalConfig(every=1, problems=20))
    from tasks.registry import make_task
    train = make_task(cfg.task).problems
    held = eval_problems(cfg, train)
    assert len(held) == 20 and not {p.question for p in held} & {p.question for p in train}
    small = OnlineConfig(task=TaskConfig(name="arithmetic", num_ops=1, operand_max=2, ops="+", size=200),
                         policy_eval=PolicyEvalConfig(every=1, holdout_share=0.0))
    with pytest.raises(ValueError, match="policy_eval.every"):   # 1 + 1 .. 2 + 2: every problem is a training one
        eval_problems(small, make_task(small.task).problems)


def default_online_config(*overrides) -> OnlineConfig:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from core.config import validate
    with initialize_config_module(config_module="configs", version_base=None):
        raw = compose(config_name="online", overrides=list(overrides))
    return validate(OmegaConf.to_container(raw, resolve=True), OnlineConfig)


def test_the_default_run_evaluates_on_questions_it_never_trains_on():
    """The default task has 154 distinct questions and its 2,000 training problems hold every one: without
    the held-out partition there is nothing left to evaluate on (the default run's empty column)."""
    from tasks.registry import make_task
    cfg = default_online_config()
    assert cfg.policy_eval.every == cfg.rounds                # round 0 and the last
    problems = make_task(cfg.task).problems
    train = training_problems(cfg, problems)
    held = eval_problems(cfg, train)
    assert len(held) >= 16 and len({p.question for p in held}) == len(held)
    assert not {p.question for p in held} & {p.question for p in train}
    assert all(held_out(p.question, cfg.policy_eval.holdout_share) for p in held)
    # the same questions on any machine: the partition is a hash of the text
    assert len(train) == sum(not held_out(p.question, 0.25) for p in problems) < len(problems)
    unpartitioned = default_online_config("policy_eval.holdout_share=0.0")
    with pytest.raises(ValueError, match="no problems outside the training set"):
        eval_problems(unpartitioned, training_problems(unpartitioned, problems))


def test_no_partition_where_nothing_is_evaluated():
    cfg = default_online_config("policy_eval.every=0", "replay.heldout_size=0")
    problems = [Problem(f"What is {i} + 1?", str(i + 1)) for i in range(40)]
    assert training_problems(cfg, problems) == problems


def test_bad_eval_settings_fail_at_validation():
    with pytest.raises(ConfigError, match="policy_eval.n"):
        PolicyEvalConfig(every=1, n=0)


def test_online_run_logs_round_zero_and_resumes_with_it(tmp_path):
    def cfg(out):
        return tiny_config(out, rounds=2, policy_eval=PolicyEvalConfig(every=1, problems=2, n=2))

    full = run(cfg(tmp_path / "a"))
    assert [m["round"] for m in full] == [0, 1, 2]
    rows = [json.loads(line) for line in (tmp_path / "a" / "eval_problems.jsonl").read_text().splitlines()]
    assert sorted({r["round"] for r in rows}) == [0, 1, 2] and len(rows) == 3 * 2
    assert sum(r["right"] for r in rows if r["round"] == 2) / 4 == full[2]["eval/pass"]
    assert full[0]["eval/policy_version"] == 0 and full[2]["eval/policy_version"] == 2
    assert all(0.0 <= m["eval/pass"] <= 1.0 for m in full)
    run(cfg(tmp_path / "b"), stop_after=1)
    resumed = run(cfg(tmp_path / "b"))
    assert [m["round"] for m in resumed] == [0, 1, 2]
    assert resumed[0]["eval/pass"] == full[0]["eval/pass"] and resumed[2]["eval/pass"] == full[2]["eval/pass"]


def test_the_initial_policy_is_not_evaluated_when_told_so(tmp_path):
    cfg = tiny_config(tmp_path, rounds=2, policy_eval=PolicyEvalConfig(every=2, problems=2, n=2, before_train=False))
    assert [m["round"] for m in run(cfg) if "eval/pass" in m] == [2]
    rows = [json.loads(line) for line in (tmp_path / "eval_problems.jsonl").read_text().splitlines()]
    assert {r["round"] for r in rows} == {2}


def test_per_problem_rows_are_the_raw_results_behind_the_pass_rate():
    loop = fake_loop(ScriptedRollout(SAMPLED, GREEDY))
    rows = []
    out = evaluate_policy(loop, PROBLEMS, rows)
    assert [(r["question"], r["right"], r["n"], r["greedy_right"]) for r in rows] == [
        ("What is 2 + 3?", 1, 2, 1), ("What is 4 * 4?", 2, 2, 0), ("What is 9 - 1?", 0, 2, 1)]
    assert sum(r["right"] for r in rows) / sum(r["n"] for r in rows) == out["eval/pass"]


def test_eval_source_is_a_fixed_set_that_may_not_hold_a_training_question(tmp_path):
    from tasks.registry import make_task
    cfg = OnlineConfig(task=TaskConfig(name="chain", size=50), policy_eval=PolicyEvalConfig(every=1, problems=5))
    train = make_task(cfg.task).problems
    path = tmp_path / "test.jsonl"
    path.write_text('{"question": "What is (2 + 3) * 4?", "reference_answer": "20"}\n')
    cfg.policy_eval.source = str(path)
    assert [p.question for p in eval_problems(cfg, train)] == ["What is (2 + 3) * 4?"]
    with path.open("a") as fh:
        fh.write(f'{{"question": "{train[7].question}", "reference_answer": "{train[7].reference_answer}"}}\n')
    with pytest.raises(ValueError, match=rf"test.jsonl, line 2: question .*{re.escape(train[7].question)}.* training"):
        eval_problems(cfg, train)
