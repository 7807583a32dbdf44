"""pass@1 / pass@8 and trace error of a testbed task's policy (docs/method.md, Testbed tasks).

    python -m bench.chain_testbed_calibration --task chain_lucky --model chain-tiny-lucky --problems 200 \
        --out outputs/calibration/chain_lucky.json

Samples `--n` completions at temperature 1 (the online runs' rollout temperature) for each of `--problems`
problems of the task's held-out generator (task seed + rl.evaluate.EVAL_SEED_OFFSET: the problems the policy
is evaluated on), checks them like the online loop (core.answers) and labels their steps with the task's exact
rule. pass@1 = the share of samples that verify; pass@n = the share of problems with at least one; trace error
= the share of verified samples with a wrong step; also the share of samples whose first error is a lingering
carry (the chain_context trigger) and the mean number of operations. Whether the policy's own confidence finds
its mistakes: the step AUROC of its min token probability (prm.confidence) for correct steps against first
wrong steps, one figure for lingering carries and one for every other first error (a slip the policy found
unlikely scores near 1; a mistake it is sure of near 0.5 or below), and the lingering carries against only the
correct steps right after a carry, where the same mistake could have been made.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from core.answers import AnswerChecker
from core.models import load_model
from core.steps import split_steps
from prm.confidence import PolicyConfidence
from prm.quality import labelled_steps, pair_auroc
from rl.config import TaskConfig
from rl.evaluate import EVAL_SEED_OFFSET
from tasks.chain.labels import STEP, apply, parse_chain
from tasks.chain.problems import ChainStep
from tasks.chain.variants import carries
from tasks.registry import make_task

REPO = Path(__file__).resolve().parents[1]


def after_carry(steps: list[str], t: int) -> bool:
    """Whether step t is a + / - step right after a well-formed step that carried or borrowed: where the
    chain_context mistake is set off."""
    if t < 1 or t >= len(steps):
        return False
    before, at = STEP.fullmatch(steps[t - 1].strip()), STEP.fullmatch(steps[t].strip())
    return (before is not None and at is not None and at[2] in "+-"
            and carries(ChainStep(int(before[1]), before[2], int(before[3]))))


def lingering_carry(steps: list[str], first_error: int) -> bool:
    """Whether the first error is the chain_context mistake: a + / - step one off (+1 / -1) right after a step
    that carried or borrowed (the step before the first error is well formed and right)."""
    if not after_carry(steps, first_error):
        return False
    at = STEP.fullmatch(steps[first_error].strip())
    a, op, b, c = int(at[1]), at[2], int(at[3]), int(at[4])
    return c - apply(a, op, b) == (1 if op == "+" else -1)


def confidence_auroc(first_errors: list[int], kinds: list[bool], scores: list[list[float]],
                     triggered: list[list[bool]]) -> dict[str, float]:
    """Step AUROC of `scores`, correct steps of every sample against first wrong steps, for the first errors
    whose kind is True (lingering carries) and for the others; and the lingering carries against the correct
    steps where they could have happened (`triggered`: per sample, per step, right after a carry). NaN where a
    group is empty."""
    correct, correct_triggered, wrong = [], [], {True: [], False: []}
    for k, kind, s, where in zip(first_errors, kinds, scores, triggered):
        for (label, v), here in zip(labelled_steps([k], [s]), where):
            if label == 0:
                wrong[kind].append((0, v))
                continue
            correct.append((1, v))
            if here:
                correct_triggered.append((1, v))
    return {"confidence_auroc_lingering_carry": pair_auroc(correct + wrong[True]),
            "confidence_auroc_other_errors": pair_auroc(correct + wrong[False]),
            "confidence_auroc_lingering_carry_after_a_carry": pair_auroc(correct_triggered + wrong[True])}


def sample(model, tok, prompts: list[str], n: int, max_new_tokens: int, seed: int) -> list[list[str]]:
    torch.manual_seed(seed)
    out = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        gen = model.generate(**ids, do_sample=True, temperature=1.0, top_p=1.0, num_return_sequences=n,
                             max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        out.append(tok.batch_decode(gen[:, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def calibrate(args) -> dict:
    cfg = TaskConfig(**OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "task" / f"{args.task}.yaml")))
    task = make_task(replace(cfg, seed=cfg.seed + EVAL_SEED_OFFSET))
    problems = task.problems[:args.problems]
    model, tok = load_model(args.model, "fp32")
    model.eval()
    texts = sample(model, tok, [task.prompt(tok, p.question) for p in problems], args.n, args.max_new_tokens,
                   args.seed)
    checker = AnswerChecker()
    try:
        verdicts = checker.verify_solutions([p.reference_answer for p in problems for _ in range(args.n)],
                                            [t for group in texts for t in group])
    finally:
        checker.close()
    passed, questions, all_steps, firsts, kinds, triggered = [], [], [], [], [], []
    for i, p in enumerate(problems):
        for j, text in enumerate(texts[i]):
            steps = split_steps(text) or [text]
            k = task.first_error(p.question, steps)
            passed.append(verdicts[i * args.n + j] == "correct")
            questions.append(p.question)
            all_steps.append(steps)
            firsts.append(k)
            kinds.append(k != -1 and lingering_carry(steps, k))
            triggered.append([after_carry(steps, t) for t in range(len(steps))])
    errors = sum(k != -1 for k in firsts)
    lucky = sum(ok and k != -1 for ok, k in zip(passed, firsts))
    confidence = PolicyConfidence(model, tok, reduce="min", prompt=lambda q: task.prompt(tok, q))
    scores = [s.mean for s in confidence.score(questions, all_steps)]
    per_problem = [any(passed[i * args.n:(i + 1) * args.n]) for i in range(len(problems))]
    return {"task": args.task, "model": args.model, "problems": len(problems), "n": args.n,
            "pass@1": sum(passed) / len(passed), f"pass@{args.n}": sum(per_problem) / len(problems),
            "trace_error": lucky / max(1, sum(passed)), "samples_with_a_wrong_step": errors / len(passed),
            "first_error_is_lingering_carry": sum(kinds) / max(1, errors),
            "mean_operations": sum(len(parse_chain(p.question)[1]) for p in problems) / len(problems),
            **confidence_auroc(firsts, kinds, scores, triggered)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True, choices=["chain", "chain_sparse", "chain_lucky", "chain_context"])
    ap.add_argument("--model", required=True, help="a model name (chain-tiny-lucky) or its built directory")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = calibrate(args)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
