"""Credit forms of the process source (docs/method.md, Credit forms): how a sample's step rewards become the
values that the advantage estimator (rl/algos.py) baselines and sums into returns-to-go.

    sum          the step rewards as they are: the return at step t is the sum of the rewards from t on
                 (DeepSeekMath's process supervision, PRIME)
    min          PURE's min-form (arXiv 2504.15275): the rewards are re-weighted by softmax(-r / T) over the
                 sample's steps, r*_k = w_k * r_k, so that as T -> 0 the return of every step up to the worst
                 one is the worst reward, min_k r_k, and 0 after it (the worst step decides the trajectory's
                 value; later steps do not change it). T = algo.min_temperature (PURE: 0.1; 0 = that limit)
    first_error  a penalty of -1 at the first step whose reward is below the threshold (the judge's first
                 wrong step, or the PRM's first step under prm.threshold), 0 everywhere else

The transform runs per sample before the estimator, so every estimator (grpo, rloo, reinforce_pp) takes
any form. `scale_process` then sets the process advantages' size relative to the outcome's.
"""
from __future__ import annotations

from enum import StrEnum
from typing import Callable

import torch


class ProcessCredit(StrEnum):
    sum = "sum"
    min = "min"
    first_error = "first_error"


def min_form(values: torch.Tensor, temperature: float) -> torch.Tensor:
    """PURE's transform r*_k = softmax(-r / T)_k * r_k; T = 0: all the weight on the first minimum."""
    if values.numel() == 0:
        return values
    if temperature == 0:
        weights = torch.zeros_like(values)
        weights[int(torch.argmin(values))] = 1.0   # argmin returns the first of equal minima
    else:
        weights = torch.softmax(-values / temperature, dim=0)
    return weights * values


def first_error_penalty(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """-1 at the first step with a reward below `threshold`, 0 elsewhere (all zeros without one)."""
    out = torch.zeros_like(values)
    below = (values < threshold).nonzero()
    if len(below):
        out[int(below[0])] = -1.0
    return out


def credit_values(values: list[torch.Tensor], form: ProcessCredit | str, temperature: float = 0.1,
                  threshold: float = 0.5) -> list[torch.Tensor]:
    """Each sample's step rewards under the credit form (module docstring)."""
    form = ProcessCredit(form)
    values = [torch.as_tensor(v, dtype=torch.float32) for v in values]
    if form == ProcessCredit.sum:
        return values
    if form == ProcessCredit.min:
        return [min_form(v, temperature) for v in values]
    return [first_error_penalty(v, threshold) for v in values]


def scale_process(process: list[torch.Tensor], outcome: list[torch.Tensor], scale: float,
                  in_batch: list[bool] | None = None,
                  reduce: Callable[[list[float]], list[float]] | None = None) -> tuple[list[torch.Tensor], float]:
    """Rescale the process advantages so that their mean |A| over the tokens that enter the loss is `scale`
    times the outcome advantages' (both counted over the same tokens). Returns them and the ratio
    process/outcome before rescaling. Where either mean is 0 (no outcome signal in the batch, or no process
    signal) the process advantages are only multiplied by `scale`. `reduce` sums [|A_p|, |A_o|] over ranks."""
    in_batch = [True] * len(process) if in_batch is None else in_batch
    stats = [float(sum(p.abs().sum() for p, k in zip(process, in_batch) if k)),
             float(sum(o.abs().sum() for o, k in zip(outcome, in_batch) if k))]
    proc, out = reduce(stats) if reduce is not None else stats
    ratio = proc / out if out > 0 else float("nan")
    factor = scale / ratio if out > 0 and proc > 0 else scale
    return [p * factor for p in process], ratio
