"""Advantages and the policy loss (docs/method.md, Advantages).

Rewards are *sparse token rewards*: a reward source puts values at chosen token positions of each
completion — outcome: one value at the last token; process: each step's PRM reward at that step's
last token. For each source separately an estimator turns them into per-token advantages using the
sample's group (the n completions of one prompt) or the whole batch:

    grpo          baseline each value: (r - mean(group)) / (std(group) + eps), pooled over the group's
                  values (unbiased std), then the return-to-go
    rloo          baseline each value: r - mean(values of the *other* samples of the group), then the
                  return-to-go
    reinforce_pp  OpenRLHF's REINFORCE++: the return-to-go of the raw values first, then whitening over
                  all action tokens of the batch that enters the loss (token-weighted mean, population
                  variance, 1 / sqrt(max(var, 1e-8))); groups are not used

The return-to-go of token t is the sum of the values placed at or after t (for the outcome that is the
one value everywhere — DeepSeekMath's process supervision for the process source). The sources'
advantages are summed with weights (PRIME: equal), each source normalised on its own scale.

Estimators live in one registry, ESTIMATORS, filled by `@register_estimator(name)` (veRL's
`register_adv_est`): a user's module that registers one makes `algo.advantage=<name>` valid, with no
edit here; the config check reads the same registry before anything loads.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

Baseline = Callable[[list[torch.Tensor], list[int]], list[torch.Tensor]]
# (values, positions, groups, lengths, in_batch, reduce) -> per-token advantages; in_batch marks the samples
# that enter the loss and reduce sums statistics over data-parallel ranks (both: the batch REINFORCE++
# whitens over); group baselines need neither
Estimator = Callable[..., list[torch.Tensor]]
EPS = 1e-6
MIN_VAR = 1e-8  # OpenRLHF's clamp before rsqrt: a batch of equal returns gets advantage 0, not nan


def _members(groups: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(g, []).append(i)
    return out


def _std(x: torch.Tensor) -> torch.Tensor:
    return x.std() if x.numel() > 1 else torch.zeros(())


def grpo(values: list[torch.Tensor], groups: list[int]) -> list[torch.Tensor]:
    out = list(values)
    for idx in _members(groups).values():
        pooled = torch.cat([values[i] for i in idx])
        if pooled.numel() == 0:
            continue
        mean, std = pooled.mean(), _std(pooled)
        for i in idx:
            out[i] = (values[i] - mean) / (std + EPS)
    return out


def rloo(values: list[torch.Tensor], groups: list[int]) -> list[torch.Tensor]:
    out = list(values)
    for idx in _members(groups).values():
        for i in idx:
            others = torch.cat([values[j] for j in idx if j != i] + [torch.zeros(0)])
            out[i] = values[i] - (others.mean() if others.numel() else 0.0)
    return out


def returns_to_go(values: torch.Tensor, positions: list[int], length: int) -> torch.Tensor:
    """Scatter values to token positions of a completion of `length` tokens, then sum from the right:
    token t gets every value placed at a position >= t. An empty completion has no tokens to credit."""
    rewards = torch.zeros(length)
    if len(positions) and length > 0:
        rewards.index_add_(0, torch.as_tensor(positions, dtype=torch.long).clamp(0, length - 1), values.float())
    return rewards.flip(0).cumsum(0).flip(0)


def whiten_tokens(returns: list[torch.Tensor], in_batch: list[bool] | None = None,
                  reduce: Callable[[list[float]], list[float]] | None = None) -> list[torch.Tensor]:
    """(x - mean) / sqrt(var) over every token of the batch: each token weighs the same, so a long
    completion counts more than a short one; population variance (OpenRLHF's masked mean of squares).
    Samples outside the batch (filtered out of the loss) are shifted alike but do not set the statistics.
    `reduce` (data parallel): [sum, sum of squares, count] of this rank's tokens -> the same over all
    ranks, so every rank whitens with the global statistics."""
    in_batch = [True] * len(returns) if in_batch is None else in_batch
    pooled = torch.cat([r for r, k in zip(returns, in_batch) if k] + [torch.zeros(0)]).double()
    stats = [float(pooled.sum()), float((pooled ** 2).sum()), pooled.numel()]
    total, squares, n = reduce(stats) if reduce is not None else stats
    if n == 0:
        return list(returns)
    mean = total / n
    rstd = 1.0 / math.sqrt(max(squares / n - mean * mean, MIN_VAR))
    return [(r - mean) * rstd for r in returns]


ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator: add an advantage estimator under `name` (the value of algo.advantage). It is called as
    fn(values, positions, groups, lengths, in_batch, reduce) and returns per-token advantages per sample.
    A name registered twice is refused: a second estimator must not silently replace the first."""
    def add(fn: Estimator) -> Estimator:
        if name in ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered "
                             f"({getattr(ESTIMATORS[name], '__qualname__', ESTIMATORS[name])}); pick another name")
        ESTIMATORS[name] = fn
        return fn
    return add


def get_estimator(name: str) -> Estimator:
    if name not in ESTIMATORS:
        raise KeyError(f"algo.advantage={name!r} is not a registered advantage estimator; registered: "
                       f"{sorted(ESTIMATORS)} (add one with rl.algos.register_estimator)")
    return ESTIMATORS[name]


def _baseline_then_returns(baseline: Baseline) -> Estimator:
    def estimate(values, positions, groups, lengths, in_batch=None, reduce=None):
        return [returns_to_go(v, p, n) for v, p, n in zip(baseline(values, groups), positions, lengths)]
    return estimate


register_estimator("grpo")(_baseline_then_returns(grpo))
register_estimator("rloo")(_baseline_then_returns(rloo))


@register_estimator("reinforce_pp")
def reinforce_pp(values: list[torch.Tensor], positions: list[list[int]], groups: list[int], lengths: list[int],
                 in_batch: list[bool] | None = None,
                 reduce: Callable[[list[float]], list[float]] | None = None) -> list[torch.Tensor]:
    return whiten_tokens([returns_to_go(v, p, n) for v, p, n in zip(values, positions, lengths)], in_batch, reduce)


def source_advantages(sources: dict[str, tuple[list[torch.Tensor], list[list[int]]]], groups: list[int],
                      lengths: list[int], estimator: str, in_batch: list[bool] | None = None,
                      reduce: Callable[[list[float]], list[float]] | None = None) -> dict[str, list[torch.Tensor]]:
    """sources: name -> (values per sample, token positions per sample). Returns name -> per-token advantages
    of each source on its own (a 0/1 outcome and a [0,1] step score live on different scales).
    in_batch: the samples that enter the loss (keep_mask); REINFORCE++ whitens over their tokens only.
    `reduce` (data parallel): REINFORCE++'s batch statistics summed over ranks (GRPO/RLOO are per group)."""
    in_batch = [True] * len(lengths) if in_batch is None else list(in_batch)
    estimate = get_estimator(estimator)
    out = {}
    for name, (values, positions) in sources.items():
        values = [torch.as_tensor(v, dtype=torch.float32) for v in values]
        out[name] = estimate(values, positions, groups, lengths, in_batch, reduce)
    return out


def compute_advantages(sources: dict[str, tuple[list[torch.Tensor], list[list[int]]]], weights: dict[str, float],
                       groups: list[int], lengths: list[int], estimator: str,
                       in_batch: list[bool] | None = None,
                       reduce: Callable[[list[float]], list[float]] | None = None) -> list[torch.Tensor]:
    """The sources' advantages (`source_advantages`) summed with `weights`; a source of weight 0 is skipped."""
    used = {name: src for name, src in sources.items() if weights.get(name, 0.0) != 0.0}
    total = [torch.zeros(n) for n in lengths]
    for name, advs in source_advantages(used, groups, lengths, estimator, in_batch, reduce).items():
        for i, adv in enumerate(advs):
            total[i] += weights[name] * adv
    return total


def outcome_source(outcomes: list[float], lengths: list[int]) -> tuple[list[torch.Tensor], list[list[int]]]:
    return [torch.tensor([float(o)]) for o in outcomes], [[n - 1] for n in lengths]


# ---- where steps end, in tokens ------------------------------------------------------------------
def step_end_tokens(tokenizer, token_ids: list[int], text: str, steps: list[str]) -> list[int]:
    """Token index of the last token of each step. Steps are located in `text` left to right; a token
    position is the first t with len(decode(ids[:t+1])) >= the step's end character (binary search)."""
    ends, cursor = [], 0
    for step in steps:
        at = text.find(step, cursor)
        if at < 0:  # cleaned step (inner blank line collapsed): anchor on its last characters
            tail = step[-12:]
            at = text.find(tail, cursor)
            end = at + len(tail) if at >= 0 else cursor + len(step)
        else:
            end = at + len(step)
        ends.append(min(end, len(text)))
        cursor = max(cursor, end)
    positions, lo = [], 0
    for end in ends:
        hi = len(token_ids) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if len(tokenizer.decode(token_ids[:mid + 1], skip_special_tokens=True)) >= end:
                hi = mid
            else:
                lo = mid + 1
        positions.append(lo)
    return positions


# ---- filters -------------------------------------------------------------------------------------
def keep_mask(groups: list[int], passed: list[bool], truncated: list[bool], filter_groups: bool,
              filter_truncated: bool) -> list[bool]:
    """Which samples enter the loss. filter_groups drops groups whose pass rate is 0 or 1 (no outcome
    signal); filter_truncated drops samples cut at max_new_tokens (their ending is unknown)."""
    keep = [True] * len(groups)
    if filter_groups:
        for idx in _members(groups).values():
            rate = sum(passed[i] for i in idx) / len(idx)
            if rate in (0.0, 1.0):
                for i in idx:
                    keep[i] = False
    if filter_truncated:
        keep = [k and not t for k, t in zip(keep, truncated)]
    return keep


# ---- PPO-clip ------------------------------------------------------------------------------------
def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  clip_eps: float, ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0,
                  num_tokens: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level mean of -min(ratio * A, clip(ratio) * A) (+ kl_coef * k3 KL to the reference).
    `num_tokens` is the token count of the whole minibatch, so micro-batches sum to one token mean."""
    mask = mask.float()
    denom = float(num_tokens if num_tokens is not None else mask.sum().clamp(min=1))
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    metrics = {"clipfrac": float(((unclipped != clipped).float() * mask).sum() / denom),
               "ratio": float((ratio.detach() * mask).sum() / denom)}
    if ref_logp is not None and kl_coef > 0:
        log_r = ref_logp - logp
        k3 = torch.exp(log_r) - log_r - 1  # unbiased, always >= 0 (Schulman's k3)
        per_token = per_token + kl_coef * k3
        metrics["kl"] = float((k3.detach() * mask).sum() / denom)
    loss = (per_token * mask).sum() / denom
    return loss, metrics
