"""SmolLM2-135M-Instruct's greedy solutions of the search table's 20 two-operation problems
(tasks.registry arithmetic, seed 0, operands 1-10, + - *) under several sets of worked-example turns.

    OMP_NUM_THREADS=1 python -m bench.arithmetic_fewshot_probe
"""
from __future__ import annotations

import torch

from core.answers import AnswerChecker
from core.models import load_model
from rl.rollout import HFRollout
from tasks.registry import (
    ARITHMETIC_FEW_SHOT,
    ARITHMETIC_SYSTEM_PROMPT,
    ArithmeticSpec,
    Task,
    arithmetic_chain,
    few_shot_for,
)

TWO, ONE = ARITHMETIC_FEW_SHOT
TWO_B = ("What is (9 - 5) + 6?", "9 - 5 = 4\n\n4 + 6 = 10\n\nThe answer is 10.")


def main() -> None:
    torch.manual_seed(0)
    spec = ArithmeticSpec(2, 10, "+-*")
    model, tok = load_model("smollm2-135m-instruct", "fp32")
    backend, checker = HFRollout(model, tok, batch_size=20), AnswerChecker()
    problems = arithmetic_chain(0, 20, spec)
    variants = {"none": [], "calibrated pair, one-step last": [TWO, ONE], "same pair, two-step last": [ONE, TWO],
                "two-step example alone": [TWO], "two hand-written two-step examples": [TWO, TWO_B],
                "generated, num_ops steps each (few_shot_for)": few_shot_for(spec)}
    print("| worked-example turns | greedy solved | equations per solution |\n|---|---|---|")
    for name, shots in variants.items():
        task = Task("arithmetic", problems, ARITHMETIC_SYSTEM_PROMPT, shots)
        texts = [g[0].text for g in backend.generate([task.prompt(tok, p.question) for p in problems], 1, 160, 0.0, 1.0)]
        solved = sum(checker.score_solutions([p.reference_answer for p in problems], texts))
        print(f"| {name} | {solved}/20 | {sum(t.count(' = ') for t in texts) / 20:.2f} |", flush=True)


if __name__ == "__main__":
    main()
