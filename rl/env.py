"""The task as a step-level MDP: `gymnasium.make("prmloop/StepMath-v0", scorer=prm_scorer)`.
The gymnasium entry point for agents outside rl.online; docs/gymnasium.md has a runnable example.

Importing rl.env registers the id. In an interpreter that has not imported it, name the module in the
id: `gymnasium.make("rl.env:prmloop/StepMath-v0", ...)` imports it first (gymnasium >= 1.0 has no
entry-point plugin discovery, so a pyproject entry point would register nothing).

reset()            -> observation = the problem text (then the steps so far, blank-line separated)
step(step_text)    -> appends the step; reward = its PRM step reward from the injected `scorer`
                      (question, steps) -> per-step rewards (the last one is this step's);
                      the episode terminates when the step states a final answer ("The answer is N",
                      \\boxed{}) and then adds the outcome reward (1 if it matches the reference);
                      it is truncated at `max_steps` (outcome reward 0: no answer given).
Without a scorer the step reward is 0 (outcome-only MDP). Observations are printable-ASCII text
(gymnasium's Text space needs a fixed charset; other characters are shown as '?').
"""
from __future__ import annotations

import string
from typing import Callable

import gymnasium as gym
from gymnasium import spaces

from core.answers import AnswerChecker, extract_answer
from tasks.problems import Problem
from core.steps import clean_step
from tasks.registry import ArithmeticSpec, arithmetic_chain

CHARSET = frozenset(string.printable)
Scorer = Callable[[str, list[str]], list[float]]


class StepMathEnv(gym.Env):
    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, problems: list[Problem] | None = None, scorer: Scorer | None = None, max_steps: int = 8,
                 max_chars: int = 4096, outcome_weight: float = 1.0, checker: AnswerChecker | None = None,
                 render_mode: str | None = None):
        self.problems = problems or arithmetic_chain(0, 500, ArithmeticSpec())
        self.scorer, self.max_steps, self.max_chars = scorer, max_steps, max_chars
        self.outcome_weight, self.render_mode = outcome_weight, render_mode
        self.checker = checker
        self.observation_space = spaces.Text(max_length=max_chars, min_length=0, charset="".join(sorted(CHARSET)))
        self.action_space = spaces.Text(max_length=256, min_length=1)
        self.problem: Problem | None = None
        self.steps: list[str] = []

    def _observation(self) -> str:
        text = "\n\n".join([self.problem.question] + self.steps)
        return "".join(c if c in CHARSET else "?" for c in text)[-self.max_chars:]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        index = (options or {}).get("index", int(self.np_random.integers(len(self.problems))))
        self.problem, self.steps = self.problems[index], []
        return self._observation(), {"index": index, "reference_answer": self.problem.reference_answer}

    def step(self, action: str):
        if self.problem is None:
            raise RuntimeError("call reset() before step()")
        self.steps.append(clean_step(str(action)) or "(empty)")
        reward = float(self.scorer(self.problem.question, list(self.steps))[-1]) if self.scorer else 0.0
        answer = extract_answer(self.steps[-1], max_chars=None)  # the checker cuts it against the gold
        terminated = answer is not None
        truncated = not terminated and len(self.steps) >= self.max_steps
        info = {"step_reward": reward, "answer": answer}
        if terminated:
            verdict = self._verify(answer)  # "unverified" (math-verify timed out) earns no reward but says so
            reward += self.outcome_weight * float(verdict == "correct")
            info["correct"], info["verdict"] = verdict == "correct", verdict
        return self._observation(), reward, terminated, truncated, info

    def _verify(self, answer: str) -> str:
        if self.checker is None:  # math-verify in a worker process, started on first use
            self.checker = AnswerChecker()
        return self.checker.verify_many([self.problem.reference_answer], [answer])[0]

    def render(self):
        return self._observation() if self.render_mode == "ansi" else None

    def close(self):
        if self.checker is not None:
            self.checker.close()


ENV_ID = "prmloop/StepMath-v0"


def register_env() -> None:
    """Register ENV_ID once: a module reload or a second call is a no-op, not gymnasium's override warning."""
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point="rl.env:StepMathEnv")


register_env()
