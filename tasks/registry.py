"""Tasks: where online-RL prompts come from, registry
`task=arithmetic|chain|chain_sparse|chain_lucky|chain_context|gsm8k|math500`.

A task is a list of `Problem`s plus the system prompt the policy sees. `TaskStream` walks it in a
seeded order, one epoch permutation after another; its `position` is all a checkpoint needs to resume.

The arithmetic-chain task is generated from a seed. Difficulty = number of operations and operand
size. A problem reads "What is (7 + 5) * 3?"; the expected solution writes one operation per step,
"7 + 5 = 12", "12 * 3 = 36", so the rule judge (judges/rule.py) checks every step exactly.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.rows import finish_rows, rows_of
from tasks.chain.labels import first_error, parse_chain
from tasks.chain.problems import CHAIN_SYSTEM_PROMPT, ChainSpec, chain_problems
from tasks.problems import Problem, load_gsm8k, load_math500

# Chosen by measurement (bench/RESULTS.md "Task calibration"): worked examples as earlier chat
# turns keep SmolLM2 on the one-operation-per-step format the rule judge reads (an example inside the
# system prompt did not: 5 % pass, half the samples rambling to the token cap).
ARITHMETIC_SYSTEM_PROMPT = ("Solve the problem step by step. Write one calculation per step, separate steps "
                            "with a blank line, and end with: The answer is N.")
ARITHMETIC_FEW_SHOT = [("What is (4 + 3) * 2?", "4 + 3 = 7\n\n7 * 2 = 14\n\nThe answer is 14."),
                       ("What is 9 - 5?", "9 - 5 = 4\n\nThe answer is 4.")]
MATH_SYSTEM_PROMPT = ("Solve the problem step by step. Separate steps with a blank line. "
                      "End with: The answer is N.")

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass
class ArithmeticSpec:
    num_ops: int = 1          # operations per problem (steps before the answer line)
    operand_max: int = 10     # operands are drawn from 1..operand_max
    ops: str = "+-"           # allowed operators
    mul_max: int = 10         # cap on multiplier operands so products stay small


def _arithmetic_steps(rng: random.Random, spec: ArithmeticSpec) -> tuple[str, int, list[str]]:
    """One chain: start at a, apply num_ops operations left to right; parentheses make the order explicit.
    Subtraction never goes below zero (the model is weak with negatives, and the task is about steps).
    Returns the expression, its value and the solution's steps ("7 + 5 = 12")."""
    value = rng.randint(1, spec.operand_max)
    expr, steps = str(value), []
    for k in range(spec.num_ops):
        op = rng.choice(spec.ops)
        if op == "-" and value < 2:
            op = "+"
        if op == "*":
            b = rng.randint(2, min(spec.mul_max, spec.operand_max))
        elif op == "-":
            b = rng.randint(1, min(value, spec.operand_max))
        else:
            b = rng.randint(1, spec.operand_max)
        expr = f"({expr} {op} {b})" if k < spec.num_ops - 1 else f"{expr} {op} {b}"
        steps.append(f"{value} {op} {b} = {OPS[op](value, b)}")
        value = OPS[op](value, b)
    return expr, value, steps


def arithmetic_problem(rng: random.Random, spec: ArithmeticSpec, index: int) -> Problem:
    expr, value, _ = _arithmetic_steps(rng, spec)
    return Problem(f"What is {expr}?", str(value), f"arithmetic/{spec.num_ops}x{spec.operand_max}:{index}")


def arithmetic_chain(seed: int, size: int, spec: ArithmeticSpec) -> list[Problem]:
    rng = random.Random(seed)
    return [arithmetic_problem(rng, spec, i) for i in range(size)]


@dataclass
class Task:
    name: str
    problems: list[Problem]
    system_prompt: str
    few_shot: list[tuple[str, str]] = field(default_factory=list)  # (question, solution) chat turns
    # the task's own exact first-error rule (question, steps) -> index or -1, free to run on every sample
    # (the chain tasks'); None: only a judge can tell
    first_error: Callable[[str, list[str]], int] | None = None

    def prompt(self, tokenizer, question: str) -> str:
        return format_prompt(tokenizer, question, self.system_prompt, self.few_shot)

    def has_wrong_step(self, question: str, steps: list[str]) -> bool | None:
        return None if self.first_error is None else self.first_error(question, steps) != -1


def few_shot_for(spec: ArithmeticSpec, count: int = 2) -> list[tuple[str, str]]:
    """The worked-example turns for problems of `spec`. One operation: the calibrated pair
    ARITHMETIC_FEW_SHOT (bench/RESULTS.md, "Task calibration"). More: `count` examples drawn from the task's
    own generator (a fixed seed, the task's operators), each solved in exactly num_ops steps: with
    examples of fewer steps SmolLM2 copied their length and answered after one operation (greedy 0/20 on
    two-operation problems, 7/20 with these; bench/RESULTS.md, search)."""
    if spec.num_ops == 1:
        return list(ARITHMETIC_FEW_SHOT)
    rng = random.Random(f"worked-examples:{spec.num_ops}:{spec.ops}")
    examples = []
    for _ in range(count):
        expr, value, steps = _arithmetic_steps(rng, spec)
        examples.append((f"What is {expr}?", "\n\n".join(steps + [f"The answer is {value}."])))
    return examples


def _arithmetic(cfg, root=None) -> Task:
    spec = ArithmeticSpec(cfg.num_ops, cfg.operand_max, cfg.ops, cfg.mul_max)
    return Task("arithmetic", arithmetic_chain(cfg.seed, cfg.size, spec), cfg.system_prompt or ARITHMETIC_SYSTEM_PROMPT,
                few_shot_for(spec) if getattr(cfg, "few_shot", True) else [])


def chain_first_error(question: str, steps: list[str]) -> int:
    """The chain rule's first error (tasks.chain.labels), as the chain judge gives it, free of charge."""
    parsed = parse_chain(question)
    return -1 if parsed is None else first_error(*parsed, steps)[0]


def _chain(cfg, root=None) -> Task:
    """The CPU testbed (tasks.chain.problems): 3-8 operation chains for the tiny policy `chain-tiny`; no few-shot
    turns. The testbed tasks chain_sparse, chain_lucky and chain_context draw from the same generator with their
    own settings (configs/task/) and pair with their own policies (tasks.chain.variants).
    task.source: a fixed problem set instead of the generator, a JSONL file of {question, reference_answer} rows
    (bench/claims writes its checked test sets so)."""
    if getattr(cfg, "source", None):
        rows = rows_of(cfg.source, Path(cfg.source))
        parse = lambda i, rec: Problem(rows.get(i, rec, "question"), str(rows.get(i, rec, "reference_answer")),
                                       f"chain/file:{i}")
        problems = finish_rows(rows, rows.parse(parse))
        return Task(cfg.name, problems, cfg.system_prompt or CHAIN_SYSTEM_PROMPT, first_error=chain_first_error)
    spec = ChainSpec(cfg.min_ops, cfg.max_ops, cfg.operand_max, cfg.value_max, cfg.ops)
    return Task(cfg.name, chain_problems(cfg.seed, cfg.size, spec), cfg.system_prompt or CHAIN_SYSTEM_PROMPT,
                first_error=chain_first_error)


def _gsm8k(cfg, root=None) -> Task:
    return Task("gsm8k", load_gsm8k(cfg.split, root, limit=cfg.limit, source=cfg.source), cfg.system_prompt or MATH_SYSTEM_PROMPT)


def _math500(cfg, root=None) -> Task:
    return Task("math500", load_math500(root, limit=cfg.limit, source=cfg.source), cfg.system_prompt or MATH_SYSTEM_PROMPT)


TASKS: dict[str, Callable[..., Task]] = {"arithmetic": _arithmetic, "chain": _chain, "chain_sparse": _chain,
                                         "chain_lucky": _chain, "chain_context": _chain, "gsm8k": _gsm8k,
                                         "math500": _math500}


def make_task(cfg, data_root: str | None = None) -> Task:
    """The task `cfg` names; `data_root` (the command's top-level key; None: ../shared/data) holds the
    datasets' files."""
    if cfg.name not in TASKS:
        raise KeyError(f"unknown task {cfg.name!r}; registered: {sorted(TASKS)}")
    task = TASKS[cfg.name](cfg, data_root)
    if not task.problems:
        raise ValueError(f"task {cfg.name!r} has no problems (limit={getattr(cfg, 'limit', None)})")
    return task


class TaskStream:
    """Batches of problems in a seeded order; epoch e uses permutation seed (seed, e).
    `position` (problems consumed so far) is the resumable state."""

    def __init__(self, problems: list[Problem], seed: int, position: int = 0):
        self.problems, self.seed, self.position = problems, seed, position

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, size: int) -> list[Problem]:
        out = []
        while len(out) < size:
            epoch, offset = divmod(self.position, len(self.problems))
            out.append(self.problems[self._order(epoch)[offset]])
            self.position += 1
        return out


def format_prompt(tokenizer, question: str, system_prompt: str | None = None,
                  few_shot: list[tuple[str, str]] | None = None) -> str:
    """The chat-formatted text a backend generates from: system turn, optional worked examples as
    earlier (user, assistant) turns, the user's question, and the assistant turn opened."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
    for user, assistant in few_shot or []:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

