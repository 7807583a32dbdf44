"""The gymnasium environment and the arithmetic-chain task."""
import os
import subprocess
import sys

import gymnasium as gym
from gymnasium.utils.env_checker import check_env

import judges.rule  # noqa: F401 (registers the rule judge)
from judges.registry import make_judge
from rl.env import ENV_ID, StepMathEnv
from tasks.registry import ArithmeticSpec, TaskStream, arithmetic_chain, make_task


def test_env_passes_gymnasium_checker():
    env = gym.make(ENV_ID, scorer=lambda q, steps: [0.5] * len(steps))
    check_env(env.unwrapped)
    env.close()


def test_env_step_rewards_and_outcome():
    calls = []

    def scorer(question, steps):
        calls.append(list(steps))
        return [0.25] * len(steps)

    env = StepMathEnv(scorer=scorer, max_steps=3)
    obs, info = env.reset(seed=0, options={"index": 0})
    problem = env.problems[0]
    assert obs == problem.question
    a, op, b = problem.question.removeprefix("What is ").rstrip("?").split()
    obs, r, term, trunc, _ = env.step(f"{a} {op} {b} = {problem.reference_answer}")
    assert (r, term, trunc) == (0.25, False, False) and obs.endswith(problem.reference_answer)
    obs, r, term, trunc, info = env.step(f"The answer is {problem.reference_answer}.")
    assert term and not trunc and info["correct"] and r == 1.25
    assert calls[-1][-1].startswith("The answer is")
    env.reset(seed=1)
    for _ in range(3):
        _, r, term, trunc, _ = env.step("thinking")
    assert trunc and not term and r == 0.25  # step limit: no outcome reward
    env.close()


def test_arithmetic_task_is_seeded_and_correct():
    a = arithmetic_chain(7, 50, ArithmeticSpec(num_ops=2, operand_max=10))
    assert a == arithmetic_chain(7, 50, ArithmeticSpec(num_ops=2, operand_max=10))
    for p in a:
        expr = p.question.removeprefix("What is ").rstrip("?")
        assert eval(expr) == int(p.reference_answer) >= 0  # test-only eval of our own generated text


def test_worked_examples_are_solved_in_the_tasks_number_of_operations():
    """SmolLM2 copies the examples' length: with a one-step example among them it answered two-operation
    problems after one step. Beyond one operation the examples come from the task's generator with
    exactly num_ops correct steps over the task's operators; one operation (the default run) keeps the
    calibrated pair."""
    from types import SimpleNamespace
    from tasks.registry import ARITHMETIC_FEW_SHOT, few_shot_for
    cfg = dict(name="arithmetic", seed=0, size=4, operand_max=10, mul_max=10, system_prompt=None, few_shot=True)
    assert make_task(SimpleNamespace(num_ops=1, ops="+-", **cfg)).few_shot == ARITHMETIC_FEW_SHOT
    for num_ops, ops in ((2, "+-*"), (3, "+-"), (5, "*")):
        shots = make_task(SimpleNamespace(num_ops=num_ops, ops=ops, **cfg)).few_shot
        assert len(shots) == 2 and shots == few_shot_for(ArithmeticSpec(num_ops, 10, ops))   # deterministic
        for question, solution in shots:
            *steps, answer = solution.split("\n\n")
            assert len(steps) == num_ops and question.count("(") == num_ops - 1
            assert all(set(step.split(" ")[1]) <= set(ops) for step in steps)
            for step in steps:   # test-only eval of our own generated text
                lhs, rhs = step.split(" = ")
                assert eval(lhs) == int(rhs)
            assert answer == f"The answer is {eval(question.removeprefix('What is ').rstrip('?'))}."
    assert make_task(SimpleNamespace(num_ops=2, ops="+-", **{**cfg, "few_shot": False})).few_shot == []


def test_arithmetic_steps_are_judged_exactly_by_the_rule_judge():
    judge = make_judge({"name": "rule"})
    items, expected = [], []
    for p in arithmetic_chain(3, 40, ArithmeticSpec(num_ops=2, operand_max=12)):
        x, op1, y = p.question.removeprefix("What is (").split(")")[0].split()
        op2, c = p.question.rstrip("?").split(")")[1].split()
        first = eval(f"{x} {op1} {y}")
        right = [f"{x} {op1} {y} = {first}", f"{first} {op2} {c} = {p.reference_answer}", f"The answer is {p.reference_answer}."]
        wrong1 = [f"{x} {op1} {y} = {first + 1}"] + right[1:]
        wrong2 = right[:1] + [f"{first} {op2} {c} = {int(p.reference_answer) + 2}"] + right[2:]
        items += [(p.question, right), (p.question, wrong1), (p.question, wrong2)]
        expected += [-1, 0, 1]
    assert [v.first_error for v in judge.judge_batch(items)] == expected


def test_task_stream_position_resumes_the_same_order():
    problems = arithmetic_chain(0, 10, ArithmeticSpec())
    s = TaskStream(problems, seed=5)
    first = s.next_batch(7) + s.next_batch(7)  # crosses an epoch boundary
    t = TaskStream(problems, seed=5)
    t.next_batch(7)
    resumed = TaskStream(problems, seed=5, position=t.position)
    assert resumed.next_batch(7) == first[7:]


def test_fresh_interpreter_makes_the_env_by_its_module_prefixed_id(tmp_path):
    """No prior `import rl.env`: the module-prefixed id imports it (gymnasium >= 1.0 has no entry-point
    plugins). Warnings are errors, so re-registering on a reload or a second call must stay silent."""
    code = ("import importlib, sys, warnings\n"
            "warnings.simplefilter('error')\n"
            "import gymnasium as gym\n"
            "assert 'rl.env' not in sys.modules\n"
            "env = gym.make('rl.env:prmloop/StepMath-v0', max_steps=1)\n"
            "obs, info = env.reset(seed=0)\n"
            "_, reward, term, trunc, _ = env.step('2 + 3 = 5')\n"
            "assert obs.startswith('What is') and (reward, term, trunc) == (0.0, False, True)\n"
            "import rl.env\n"
            "importlib.reload(rl.env)\n"
            "rl.env.register_env()\n"
            "assert gym.make('prmloop/StepMath-v0').unwrapped.max_steps == 8\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
