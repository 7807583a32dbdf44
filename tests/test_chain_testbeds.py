"""The testbed tasks chain_sparse, chain_lucky, chain_context (tasks.chain.variants, configs/task/): seeded, in
range, lucky solutions pass with wrong steps that the judge finds, the lingering carry fires on its context only,
each has its own policy spec, and the trace error counts passed solutions with a wrong step."""
import math
import random
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

import judges.chain  # noqa: F401 (registers the chain judge)
from core.answers import AnswerChecker
from core.steps import join_steps
from judges.registry import make_judge
from rl.config import TaskConfig
from rl.loop import trace_error
from tasks.chain.labels import STEP, apply
from tasks.chain.policy import TESTBED_SPECS, ChainModelSpec, ensure_chain_tiny, is_built
from tasks.chain.problems import ChainStep, parse_question
from tasks.chain.variants import carries, context_solution, context_steps, lucky_solution, lucky_steps
from tasks.registry import make_task

CONFIGS = "configs/task"


def task_config(name: str) -> TaskConfig:
    return TaskConfig(**OmegaConf.to_container(OmegaConf.load(f"{CONFIGS}/{name}.yaml")))


@pytest.mark.parametrize("name,ops_range,operators", [("chain_sparse", (12, 20), "+-*"), ("chain_lucky", (4, 8), "+-"),
                                                      ("chain_context", (3, 8), "+-")])
def test_testbed_problems_are_seeded_and_in_range(name, ops_range, operators):
    cfg = task_config(name)
    task = make_task(cfg)
    assert task.name == name and task.problems == make_task(cfg).problems
    assert task.problems != make_task(replace(cfg, seed=1)).problems
    counts = set()
    for p in task.problems[:400]:
        value, ops = parse_question(p.question)
        counts.add(len(ops))
        assert all(op in operators and 1 <= b <= 9 for op, b in ops)
        for op, b in ops:
            value = ChainStep(value, op, b).value
            assert 0 <= value <= 99
        assert str(value) == p.reference_answer
    assert counts == set(range(ops_range[0], ops_range[1] + 1))


def test_lucky_solutions_reach_the_right_answer_from_wrong_steps_and_the_judge_says_so():
    judge, checker = make_judge({"name": "chain"}), AnswerChecker()
    problems = make_task(task_config("chain_lucky")).problems[:60]
    rng = random.Random(0)
    texts, refs = [], []
    for p in problems:
        n = len(parse_question(p.question)[1])
        slip = rng.randrange(n - 1)
        steps = lucky_steps(p.question, slip, rng.randrange(slip + 1, n), rng)
        assert judge.judge(p.question, steps).first_error == slip        # the slip is the first wrong step
        equations = [STEP.fullmatch(s) for s in steps[:-1]]
        bad = [k for k, m in enumerate(equations) if m is None or apply(int(m[1]), m[2], int(m[3])) != int(m[4])]
        assert len(bad) == 2 and bad[0] == slip                          # slip and compensation: two false equations
        texts.append(join_steps(steps))
        refs.append(p.reference_answer)
    try:
        verdicts = checker.verify_solutions(refs, texts)
    finally:
        checker.close()
    assert verdicts == ["correct"] * len(problems)                       # ... and every answer is right
    with pytest.raises(ValueError):
        lucky_steps(problems[0].question, 2, 2, rng)


def test_lucky_and_context_solutions_are_seeded_and_labelled_exactly():
    judge = make_judge({"name": "chain"})
    for name, make in (("chain_lucky", lambda rng, q: lucky_solution(rng, q, 0.25, 0.5)),
                       ("chain_context", lambda rng, q: context_solution(rng, q, 0.25, 0.8))):
        problems = make_task(task_config(name)).problems[:100]
        a = [make(random.Random(f"{name}:{i}"), p.question) for i, p in enumerate(problems)]
        b = [make(random.Random(f"{name}:{i}"), p.question) for i, p in enumerate(problems)]
        assert a == b
        assert all(t.first_error == judge.judge(t.question, t.steps).first_error for t in a)
        assert 0 < sum(t.first_error != -1 for t in a) < len(a)


def test_the_lingering_carry_fires_right_after_a_carry_and_nowhere_else():
    question = "What is ((((18 + 5) + 3) - 7) + 4) + 2?"   # 18 + 5 carries, 26 - 7 borrows; the rest do not
    steps = context_steps(question, random.Random(0), context_rate=1.0)
    assert steps[:5] == ["18 + 5 = 23", "23 + 3 = 27", "27 - 7 = 20", "20 + 4 = 24", "24 + 2 = 26"]
    assert make_judge({"name": "chain"}).judge(question, steps).first_error == 1
    assert carries(ChainStep(18, "+", 5)) and carries(ChainStep(26, "-", 7)) and not carries(ChainStep(23, "+", 3))
    assert context_steps(question, random.Random(0), context_rate=0.0)[:2] == ["18 + 5 = 23", "23 + 3 = 26"]
    for step in steps[:-1]:
        assert STEP.fullmatch(step)


def test_trace_error_of_chain_tasks_comes_from_the_exact_rule():
    task = make_task(task_config("chain_lucky"))
    q = "What is ((5 + 8) + 1) - 2?"
    right = ["5 + 8 = 13", "13 + 1 = 14", "14 - 2 = 12", "The answer is 12."]
    lucky = ["5 + 8 = 3", "3 + 1 = 14", "14 - 2 = 12", "The answer is 12."]
    wrong = ["5 + 8 = 13", "13 + 1 = 15", "15 - 2 = 13", "The answer is 13."]
    flags = [task.has_wrong_step(q, s) for s in (right, lucky, wrong)]
    assert flags == [False, True, True]
    assert trace_error([True, True, False], flags) == 0.5             # the wrong one did not pass: not counted
    assert make_task(TaskConfig(name="arithmetic")).has_wrong_step(q, right) is None


def test_each_testbed_has_its_own_deterministic_policy_build(tmp_path):
    """Its own spec and cache dir; a few-step build of each is identical from its seed (the full build is the same
    code with its spec's steps)."""
    assert {spec().name for spec in TESTBED_SPECS.values()} == set(TESTBED_SPECS)
    assert all(issubclass(spec, ChainModelSpec) for spec in TESTBED_SPECS.values())
    spec = TESTBED_SPECS["chain-tiny-lucky"](train_steps=2, batch_size=2, misconception_steps=2, sft_max_cycles=0)
    one = ensure_chain_tiny(tmp_path / "a", spec, log=lambda *_: None)
    two = ensure_chain_tiny(tmp_path / "b", spec, log=lambda *_: None)
    assert one.name == "chain-tiny-lucky" and is_built(one)
    assert (one / "model.safetensors").read_bytes() == (two / "model.safetensors").read_bytes()
    rng = random.Random(0)
    q = "What is ((5 + 8) + 1) - 2?"
    assert spec.solution(random.Random(1), q, 0.0) == spec.solution(random.Random(1), q, 0.0)
    assert ChainModelSpec().solution(rng, q, 0.0).source == "chain"


def test_calibration_reports_pass_at_k_and_finds_the_lingering_carry(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import chain_testbed_calibration as calibration

    question = "What is ((((18 + 5) + 3) - 7) + 4) + 2?"
    steps = context_steps(question, random.Random(0), context_rate=1.0)
    assert calibration.lingering_carry(steps, 1)                     # 23 + 3 = 27 after a carry
    slip = ["18 + 5 = 23", "23 + 3 = 25", "25 - 7 = 18", "18 + 4 = 22", "22 + 2 = 24", "The answer is 24."]
    assert not calibration.lingering_carry(slip, 1)                  # off by -2: an ordinary slip
    spec = TESTBED_SPECS["chain-tiny-context"](train_steps=2, batch_size=2, misconception_steps=0, sft_max_cycles=0)
    built = ensure_chain_tiny(tmp_path, spec, log=lambda *_: None)
    args = SimpleNamespace(task="chain_context", model=str(built), problems=2, n=2, max_new_tokens=8, seed=0)
    out = calibration.calibrate(args)
    assert out["problems"] == 2 and 0.0 <= out["pass@1"] <= out["pass@2"] <= 1.0 and 3 <= out["mean_operations"] <= 8
    assert {"confidence_auroc_lingering_carry", "confidence_auroc_other_errors"} <= set(out)


def test_calibration_confidence_auroc_splits_first_errors_by_kind():
    """Correct steps of every sample (0.9, 0.8 | 0.95 | none | 0.4) against each kind's first wrong steps: the
    lingering carry at 0.5 ranks below three of the four (0.75); the other error at 0.85 below two (0.5).
    After a carry: only 0.8 (sample 0's second step; sample 1's third step comes after its first error) and
    0.4 (sample 3) are correct steps there: the carry at 0.5 ranks below one of the two."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import chain_testbed_calibration as calibration

    out = calibration.confidence_auroc(
        [-1, 1, 0, -1], [False, True, False, False], [[0.9, 0.8], [0.95, 0.5, 0.7], [0.85, 0.9], [0.4]],
        [[False, True], [False, True, True], [False, False], [True]])
    assert out == {"confidence_auroc_lingering_carry": 0.75, "confidence_auroc_other_errors": 0.5,
                   "confidence_auroc_lingering_carry_after_a_carry": 0.5}
    assert math.isnan(calibration.confidence_auroc([-1], [False], [[0.9]], [[False]])["confidence_auroc_other_errors"])


def test_a_step_after_a_carry_is_where_the_lingering_carry_is_set_off():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import chain_testbed_calibration as calibration

    steps = ["18 + 5 = 23", "23 + 3 = 26", "26 * 2 = 52", "52 - 7 = 45"]
    assert [calibration.after_carry(steps, t) for t in range(4)] == [False, True, False, False]
