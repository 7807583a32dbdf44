"""The policy's own per-step confidence: a free step scorer (no labels) every PRM result is compared to.

For a question and its steps, the policy reads prompt + "\\n\\n".join(steps) once; a step's tokens are the
completion tokens whose characters overlap the step's text (blank-line separators belong to no step).
Its score is exp(reduce(token log-probs)): reduce = "min" (the least likely token: a slip the policy
itself finds unlikely) or "mean" (geometric-mean token probability). Scores are in (0, 1], higher =
more likely correct, so they plug into ProcessBench F1 (first step below tau), best-of-N (aggregate
the steps) and search like PRM step scores.

    scorer = PolicyConfidence(model, tokenizer, reduce="min", system_prompt=None)   # or prompt=fn(question)
    scorer(questions, steps) -> list[list[float]]           # prm.eval.StepScorer
    scorer.score(questions, steps) -> list[StepScores]      # PRMLearner.score's shape (std 0)

The read is a pass of its own over prompt + steps (the generation's logits are not kept): score() reports
each item's positions as StepScores.forward_tokens, the compute rl.search charges to its scorer.

Calibrated: the same confidence through a 1-D logistic fit on judged steps (right = 1, wrong = 0),
sigmoid(a + b * log confidence), a and b by Newton's method (fit_logistic); the baseline that spends the
PRM's labels on the cheapest possible model of them.

    calibrated = CalibratedConfidence.fit(confidences, first_errors)   # the labelled steps' scores
    calibrated.transform(scorer(questions, steps)) -> list[list[float]]
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from prm.model import LOGPROB_FLOOR, StepScores
from core.steps import join_steps

REDUCE = ("min", "mean")


def step_spans(steps: list[str]) -> list[tuple[int, int]]:
    """Character span of each step inside join_steps(steps)."""
    spans, pos = [], 0
    for s in steps:
        spans.append((pos, pos + len(s)))
        pos += len(s) + 2
    return spans


def token_steps(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Step index of each completion token by character overlap; -1 for separator-only tokens."""
    out = []
    for a, b in offsets:
        hit = next((k for k, (s, e) in enumerate(spans) if a < e and b > s), -1)
        out.append(hit)
    return out


class PolicyConfidence:
    def __init__(self, model, tokenizer, reduce: str = "min", system_prompt: str | None = None, batch_size: int = 16,
                 prompt: Callable[[str], str] | None = None):
        """`prompt`: the chat-formatted text the policy answered (e.g. a task's prompt with its few-shot
        turns); default: the bare question under `system_prompt`."""
        if reduce not in REDUCE:
            raise ValueError(f"reduce must be one of {REDUCE}, got {reduce!r}")
        if not tokenizer.is_fast:
            raise ValueError("PolicyConfidence needs a fast tokenizer (character offsets)")
        self.model, self.tok, self.reduce = model, tokenizer, reduce
        self.system_prompt, self.batch_size, self.prompt = system_prompt, batch_size, prompt

    def _prompt(self, question: str) -> str:
        if self.prompt is not None:
            return self.prompt(question)
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        messages.append({"role": "user", "content": question})
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def token_logprobs(self, questions: list[str], steps: list[list[str]]) -> list[tuple[list[float], list[int]]]:
        """Per item: the completion's token log-probs and each token's step index."""
        return [(logps, owner) for logps, owner, _ in self._read(questions, steps)]

    def _read(self, questions: list[str], steps: list[list[str]]) -> list[tuple[list[float], list[int], int]]:
        """token_logprobs' pairs and the positions each item's row ran through the model (padding not counted)."""
        rows, owners, starts = [], [], []
        for q, st in zip(questions, steps):
            prompt_ids = self.tok(self._prompt(q), add_special_tokens=False).input_ids
            enc = self.tok(join_steps(st), add_special_tokens=False, return_offsets_mapping=True)
            rows.append(prompt_ids + enc.input_ids)
            owners.append(token_steps(enc.offset_mapping, step_spans(st)))
            starts.append(len(prompt_ids))
        out = []
        device = next(self.model.parameters()).device
        for b in range(0, len(rows), self.batch_size):
            chunk = rows[b:b + self.batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), self.tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(chunk):
                ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
            with torch.no_grad():
                logp = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().log_softmax(-1)
            for i, r in enumerate(chunk):
                s = starts[b + i]
                target = torch.tensor(r[s:], device=device)
                out.append(logp[i, s - 1:len(r) - 1].gather(-1, target[:, None]).squeeze(-1).tolist())
        return list(zip(out, owners, map(len, rows)))

    def __call__(self, questions: list[str], steps: list[list[str]]) -> list[list[float]]:
        return [scores for scores, _ in self._scored(questions, steps)]

    def _scored(self, questions: list[str], steps: list[list[str]]) -> list[tuple[list[float], int]]:
        scores = []
        for (logps, owner, ran), st in zip(self._read(questions, steps), steps):
            per_step: list[list[float]] = [[] for _ in st]
            for lp, k in zip(logps, owner):
                if k >= 0:
                    per_step[k].append(lp)
            scores.append(([float(torch.tensor(v).min().exp() if self.reduce == "min" else torch.tensor(v).mean().exp())
                            if v else 1.0 for v in per_step], ran))
        return scores

    def score(self, questions: list[str], steps: list[list[str]], batch_size: int | None = None) -> list[StepScores]:
        return [StepScores(list(s), [0.0] * len(s), ran) for s, ran in self._scored(questions, steps)]


def fit_logistic(x, y, ridge: float = 1e-3, max_steps: int = 100) -> tuple[float, float]:
    """(a, b) maximising sum_i log P(y_i | x_i) under P(1 | x) = sigmoid(a + b x), less ridge / 2 * (a^2 + b^2):
    Newton's method on a concave objective (float64). The tiny ridge keeps labels of one class, or
    separable ones, at a finite fit instead of coefficients running off to infinity."""
    X = np.stack([np.ones(len(x)), np.asarray(x, dtype=np.float64)], 1)
    target = np.asarray(y, dtype=np.float64)
    w = np.zeros(2)
    for _ in range(max_steps):
        p = 0.5 * (1.0 + np.tanh(0.5 * (X @ w)))        # sigmoid without overflow
        grad = X.T @ (target - p) - ridge * w
        hess = (X * (p * (1.0 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w += step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def log_confidence(value: float) -> float:
    """The fit's input: the log of the min token probability, floored as the PRM's log-prob columns are
    (min probabilities crowd against 0 and 1; their log spreads the range where the policy's surprise varies)."""
    return max(math.log(value), LOGPROB_FLOOR) if value > 0 else LOGPROB_FLOOR


class CalibratedConfidence:
    def __init__(self, intercept: float, slope: float):
        self.intercept, self.slope = intercept, slope

    @classmethod
    def fit(cls, confidences: list[list[float]], first_errors: list[int]) -> CalibratedConfidence:
        """Fitted on the labelled steps of judged trajectories (prm.quality.labelled_steps: the steps before
        the first error right, the first error wrong, later steps unlabelled)."""
        from prm.quality import labelled_steps
        pairs = labelled_steps(first_errors, confidences)
        return cls(*fit_logistic([log_confidence(s) for _, s in pairs], [y for y, _ in pairs]))

    def transform(self, confidences: list[list[float]]) -> list[list[float]]:
        return [[0.5 * (1.0 + math.tanh(0.5 * (self.intercept + self.slope * log_confidence(v)))) for v in s]
                for s in confidences]
