"""Measure SmolLM2's pass rate on arithmetic-chain settings (HF rollout, bf16, sampled): pick defaults.

    python -m bench.calibrate_arithmetic --problems 16 --n 2 --max-new-tokens 40 --temperature 0.7 \
        --settings 1x10+-,1x10+-*,2x10+-*
A setting is <num_ops>x<operand_max><ops>. Prompts are the task's own (system prompt + few-shot turns).
"""
import argparse
import json
import time

import torch

import judges.rule  # noqa: F401 (registers "rule")
from core.answers import AnswerChecker
from core.models import load_model
from core.steps import split_steps
from judges.registry import make_judge
from rl.rollout import HFRollout
from tasks.registry import (
    ARITHMETIC_SYSTEM_PROMPT,
    ArithmeticSpec,
    Task,
    arithmetic_chain,
    few_shot_for,
)


def parse_setting(text: str) -> tuple[int, int, str]:
    ops_at = next(i for i, c in enumerate(text) if c in "+-*")
    num_ops, operand_max = text[:ops_at].split("x")
    return int(num_ops), int(operand_max), text[ops_at:]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--settings", default="1x10+-,1x10+-*,2x10+-*")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model("smollm2-135m-instruct", "bf16")
    backend = HFRollout(model, tok, batch_size=32)
    checker, judge = AnswerChecker(), make_judge({"name": "rule"})
    for num_ops, operand_max, ops in map(parse_setting, args.settings.split(",")):
        problems = arithmetic_chain(1234, args.problems, ArithmeticSpec(num_ops, operand_max, ops))
        task = Task("arithmetic", problems, ARITHMETIC_SYSTEM_PROMPT, few_shot_for(ArithmeticSpec(num_ops, operand_max, ops)))
        prompts = [task.prompt(tok, p.question) for p in problems]
        start = time.perf_counter()
        groups = backend.generate(prompts, args.n, args.max_new_tokens, args.temperature, 1.0)
        secs = time.perf_counter() - start
        flat = [(p, c) for p, g in zip(problems, groups) for c in g]
        ok = checker.score_solutions([p.reference_answer for p, _ in flat], [c.text for _, c in flat])
        verdicts = judge.judge_batch([(p.question, split_steps(c.text) or [c.text]) for p, c in flat])
        tokens = sum(len(c.token_ids) for _, c in flat)
        print(json.dumps({"num_ops": num_ops, "operand_max": operand_max, "ops": ops, "pass_rate": sum(ok) / len(ok),
                          "pass_at_n": sum(any(ok[i * args.n:(i + 1) * args.n]) for i in range(len(problems))) / len(problems),
                          "rule_all_correct": sum(v.first_error == -1 for v in verdicts) / len(verdicts),
                          "truncated": sum(c.finish_reason == "length" for _, c in flat) / len(flat),
                          "tokens_per_s": tokens / secs, "seconds": secs}), flush=True)
        print("   sample:", repr(flat[0][1].text[:160]), flush=True)
