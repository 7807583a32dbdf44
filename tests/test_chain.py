"""The chain task (tasks.chain.problems): seeded, in range, and the rule judge's labels are exact, injected errors included."""
import random

import pytest

import judges.chain  # noqa: F401 (registers the chain judge)
import judges.rule  # noqa: F401 (registers the rule judge)
from judges.registry import make_judge
from tasks.chain.problems import ChainSpec, chain_problems, parse_question, sample_solution, solution_steps
from core.steps import join_steps, split_steps
from rl.config import TaskConfig
from tasks.registry import make_task


def _value(question: str) -> int:
    """The chain's value recomputed here from the question text, independently of tasks.chain.problems."""
    expr = question.removeprefix("What is ").rstrip("?")
    return eval(expr)  # test-only eval of our own generated text


def test_chain_problems_are_seeded_in_range_and_answered():
    spec = ChainSpec(min_ops=3, max_ops=8, operand_max=9, value_max=99, ops="+-*")
    a = chain_problems(5, 300, spec)
    assert a == chain_problems(5, 300, spec) and a != chain_problems(6, 300, spec)
    counts = set()
    for p in a:
        start, ops = parse_question(p.question)
        counts.add(len(ops))
        assert 1 <= start <= 9 and all(1 <= b <= 9 and op in "+-*" for op, b in ops)
        assert _value(p.question) == int(p.reference_answer)
        value = start
        for op, b in ops:  # every intermediate value stays in 0..value_max
            value = eval(f"{value} {op} {b}")
            assert 0 <= value <= 99
    assert counts == set(range(3, 9))


def test_worked_example_reads_as_documented():
    steps = solution_steps("What is ((7 + 5) * 3) - 4?")
    assert join_steps(steps) == "7 + 5 = 12\n\n12 * 3 = 36\n\n36 - 4 = 32\n\nThe answer is 32."
    assert split_steps(join_steps(steps)) == steps


@pytest.mark.parametrize("name", ["rule", "chain"])
@pytest.mark.parametrize("ops", ["+-*", "+-", "*/+"])
def test_judge_labels_are_exact_on_generated_chains_with_injected_errors(ops, name):
    judge = make_judge({"name": name})
    rng = random.Random(0)
    problems = chain_problems(1, 400, ChainSpec(min_ops=1, max_ops=8, ops=ops))
    injected = 0
    for p in problems:
        t = sample_solution(rng, p.question, error_rate=0.5)
        assert judge.judge(p.question, t.steps).first_error == t.first_error
        final = int(t.steps[-1].removeprefix("The answer is ").rstrip("."))
        if t.first_error == -1:
            assert final == int(p.reference_answer)
        else:
            injected += 1
            # exactly one false equation, at the labelled step; the answer inherits the slip
            lhs, rhs = t.steps[t.first_error].split(" = ")
            assert eval(lhs) != int(rhs)
            for k, step in enumerate(t.steps[:-1]):
                if k != t.first_error:
                    lhs, rhs = step.split(" = ")
                    assert eval(lhs) == int(rhs)
    assert 120 < injected < 280  # ~ error_rate of 400


def test_misconception_writes_the_row_below_and_is_labelled_at_its_first_trigger():
    judge, rule = make_judge({"name": "chain"}), make_judge({"name": "rule"})
    q = "What is (((2 * 7) + 2) - 6) * 8?"
    # 2 * 7 is written as 2 * 6 = 12; 12 + 2 = 14; 14 - 6 = 8; 8 * 8 as 8 * 7 = 56
    steps = solution_steps(q, misconception_rate=1.0)
    assert steps == ["2 * 7 = 12", "12 + 2 = 14", "14 - 6 = 8", "8 * 8 = 56", "The answer is 56."]
    assert judge.judge(q, steps).first_error == 0
    assert solution_steps(q, misconception_rate=0.0) == ["2 * 7 = 14", "14 + 2 = 16", "16 - 6 = 10", "10 * 8 = 80",
                                                         "The answer is 80."]
    # a slip before the first trigger is the first error; triggers after it are further false equations
    rng = random.Random(0)
    for _ in range(200):
        t = sample_solution(rng, q, error_rate=0.5, misconception_rate=0.5)
        # the label is the chain judge's; the rule judge (equations only) must agree independently
        assert judge.judge(q, t.steps).first_error == t.first_error == rule.judge(q, t.steps).first_error
    rng, hits, n = random.Random(1), 0, 2000
    for p in chain_problems(3, n, ChainSpec()):
        t = sample_solution(rng, p.question, error_rate=0.0, misconception_rate=0.8)
        hits += t.first_error >= 0
        assert rule.judge(p.question, t.steps).first_error == t.first_error
    assert 0.1 < hits / n < 0.3  # ~0.8 x the share of chains with a x 7 / x 8 step


def test_error_at_every_step_is_found_at_that_step():
    judge = make_judge({"name": "rule"})
    q = "What is ((((8 + 7) * 3) - 9) + 6) * 2?"
    for k in range(5):
        steps = solution_steps(q, error_at=k, rng=random.Random(k))
        assert judge.judge(q, steps).first_error == k


@pytest.mark.parametrize("steps, expected", [
    (["9 + 7 = 16", "16 - 4 = 12", "12 * 6 = 72", "The answer is 72."], -1),
    (["9 + 7 = 16", "16 - 8 = 8", "8 * 6 = 48", "The answer is 48."], 1),     # true equation, wrong operand
    (["9 + 7 = 16", "15 - 4 = 11", "11 * 6 = 66", "The answer is 66."], 1),   # not the previous result
    (["9 + 7 = 17", "17 - 4 = 13", "13 * 6 = 78", "The answer is 78."], 0),   # a slip, then consistent
    (["9 + 7 = 16", "16 - 4 = 12", "12 * 6 = 72", "The answer is 70."], 3),   # wrong answer line
    (["9 + 7 = 16", "16 - 4 = 12", "12 + 6 = 18", "The answer is 18."], 2),   # wrong operator
    (["9 + 7 = 16", "16 - 4 = 12", "12 * 6 = 72", "The answer is 72.", "72 + 1 = 73"], 4),
    (["9 + 7 = 16", "16 - 4 is 12"], 1),
    (["9 + 7 = 16", "16 - 4 = 12"], -1),                                        # stopped early: no wrong step
])
def test_chain_judge_knows_what_each_step_must_compute(steps, expected):
    judge = make_judge({"name": "chain"})
    assert judge.judge("What is ((9 + 7) - 4) * 6?", steps).first_error == expected


def test_chain_judge_falls_back_to_rule_judge_on_other_questions():
    judge = make_judge({"name": "chain"})
    assert judge.judge("Tom has 3 apples and buys 4.", ["3 + 4 = 8", "The answer is 8."]).first_error == 0


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="min_ops"):
        ChainSpec(min_ops=5, max_ops=3)
    with pytest.raises(ValueError, match="ops"):
        ChainSpec(ops="+^")


def test_chain_task_is_registered():
    task = make_task(TaskConfig(name="chain", size=50, operand_max=9, ops="+-*", min_ops=3, max_ops=4))
    assert task.name == "chain" and len(task.problems) == 50 and not task.few_shot
    assert all(len(parse_question(p.question)[1]) in (3, 4) for p in task.problems)
