"""Uncertainty selection (ActPRM Eq. 5) and the ensemble PRM loss (Eq. 4), on padded tensors.

Shapes: B trajectories, S step slots (padded), K heads. `step_mask [B, S]` marks real steps.

Eq. 5, per trajectory: mu_i = mean_e p, sigma_i = std_e p (unbiased, N - 1, as ActivePRM's trainer's
torch.std; K = 1 gives exactly 0). i* = first step with mu_i < 0.5 (the
first predicted error; all steps if none). Over steps i <= i* only:
    aleatoric  some step has max(mu_i, 1 - mu_i) < delta_pred
    epistemic  some step has sigma_i > delta_std
selected = aleatoric or epistemic. Steps after i* are ignored: once the PRM believes a step is wrong,
what it thinks of the later ones does not change its verdict.

Eq. 4: masked mean of BCE-with-logits over (heads x selected trajectories x labelled steps) +
lambda * mean((phi - phi_init)^2) over all head parameters (lambda forced to 0 when K = 1).
Labelled steps of a trajectory with first error k are 0..k (labels [1]*k + [0]); all steps if k = -1.
`pos_weight` weights the "correct" terms (PRM800K is 93.5 % correct steps: < 1 counters the collapse
to "everything is correct"); the mean is weighted, i.e. divided by the total weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from prm.config import SelectMode


def head_mean_std(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p [K, ...] -> mean and unbiased std over heads (dim 0). K = 1: std exactly 0, not torch's nan."""
    if p.shape[0] == 1:
        return p[0], torch.zeros_like(p[0])
    return p.mean(0), p.std(0, correction=1)


def ensemble_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [K, B, S] -> (mu, sigma) [B, S]: mean and unbiased std of sigmoid over heads."""
    return head_mean_std(torch.sigmoid(logits.detach().float()))


def considered_steps(mu: torch.Tensor, step_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] bool: real steps up to and including the first predicted error (all real steps if none)."""
    predicted_error = (mu < 0.5) & step_mask
    # number of predicted errors strictly before each slot; a slot is considered while that is 0
    errors_before = torch.cumsum(predicted_error.int(), dim=1) - predicted_error.int()
    return step_mask & (errors_before == 0)


def select_uncertain(mu: torch.Tensor, sigma: torch.Tensor, step_mask: torch.Tensor,
                     delta_pred: float = 0.9, delta_std: float = 0.01) -> torch.Tensor:
    """Eq. 5: [B] bool, True = uncertain (send to the judge, train on it)."""
    considered = considered_steps(mu, step_mask)
    aleatoric = (torch.maximum(mu, 1 - mu) < delta_pred) & considered
    epistemic = (sigma > delta_std) & considered
    return (aleatoric | epistemic).any(dim=1)


def uncertainty_priority(mu: torch.Tensor, sigma: torch.Tensor, step_mask: torch.Tensor) -> torch.Tensor:
    """[B] float: how uncertain a trajectory is, to rank Eq. 5 selections under a label cap.
    Largest head disagreement over the considered steps, plus how far the least confident considered
    step is from certainty (both in probability units)."""
    considered = considered_steps(mu, step_mask)
    max_sigma = torch.where(considered, sigma, torch.zeros_like(sigma)).amax(dim=1)
    min_conf = torch.where(considered, torch.maximum(mu, 1 - mu), torch.ones_like(mu)).amin(dim=1)
    return max_sigma + (1 - min_conf)


@dataclass
class Selection:
    """A selection decided on the scores of the pass that trains (PRMLearner.update)."""
    mode: SelectMode
    budget: int | None = None                 # at most this many trajectories (None: no cap)
    rng: np.random.Generator | None = None    # random mode's draw


def select_trajectories(mode: SelectMode, mu: torch.Tensor, sigma: torch.Tensor, step_mask: torch.Tensor,
                        budget: int | None = None, rng: np.random.Generator | None = None,
                        delta_pred: float = 0.9, delta_std: float = 0.01) -> torch.Tensor:
    """The one selection of prm.train and rl.online: [B] bool, True = send to the judge.

    uncertain  Eq. 5; over `budget`, the most uncertain first (uncertainty_priority)
    random     min(budget, B) trajectories drawn uniformly with `rng` (the caller sizes the budget, e.g.
               as many as Eq. 5 picks)
    all        every trajectory; over `budget`, the first ones
    none       nothing
    """
    count = mu.shape[0]
    cap = count if budget is None else max(0, min(budget, count))
    chosen = torch.zeros(count, dtype=torch.bool)
    if mode == SelectMode.none or cap == 0:
        return chosen
    if mode == SelectMode.random:
        if rng is None:
            raise ValueError("select mode random needs an rng")
        chosen[torch.as_tensor(rng.choice(count, size=cap, replace=False), dtype=torch.long)] = True
        return chosen
    if mode == SelectMode.all:
        chosen[:cap] = True
        return chosen
    if mode != SelectMode.uncertain:
        raise ValueError(f"unknown select mode {mode!r}; one of {[m.value for m in SelectMode]}")
    uncertain = select_uncertain(mu, sigma, step_mask, delta_pred, delta_std).cpu()
    if int(uncertain.sum()) <= cap:
        return uncertain
    priority = uncertainty_priority(mu, sigma, step_mask).cpu().masked_fill(~uncertain, -1.0)
    chosen[torch.sort(priority, descending=True, stable=True).indices[:cap]] = True
    return chosen


def step_labels(first_errors: list[int | None], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels [B, S] float, labelled [B, S] bool) from first-error indices; None = unlabelled row."""
    labels = torch.zeros((len(first_errors), width))
    labelled = torch.zeros((len(first_errors), width), dtype=torch.bool)
    for b, k in enumerate(first_errors):
        if k is None:
            continue
        n = width if k == -1 else k + 1
        labels[b, :n] = 1.0
        if k != -1:
            labels[b, k] = 0.0
        labelled[b, :n] = True
    return labels, labelled


def bce_weights(labels: torch.Tensor, labelled: torch.Tensor, step_mask: torch.Tensor, selected: torch.Tensor,
                pos_weight: float = 1.0) -> torch.Tensor:
    """[B, S] weight of each step's BCE term in Eq. 4 (0 where not selected, labelled and real)."""
    mask = (labelled & step_mask & selected[:, None]).float()
    return mask * torch.where(labels > 0.5, torch.full_like(labels, pos_weight), torch.ones_like(labels))


def prm_loss(logits: torch.Tensor, penalty: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor,
             step_mask: torch.Tensor, selected: torch.Tensor, reg_lambda: float = 0.5,
             pos_weight: float = 1.0, total_weight: float | None = None,
             scale: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 4. logits [K, B, S]; labels/labelled/step_mask [B, S]; selected [B] bool.

    Data parallel: `total_weight` is the BCE normaliser over every rank's batch (heads included) and
    `scale` the number of ranks, so the ranks' averaged gradients are those of one Eq. 4 over the union.
    Never NaN: with nothing selected (or nothing labelled) the BCE term is an exact 0 that still
    belongs to the graph, so every rank of a data-parallel run can call backward."""
    num_heads = logits.shape[0]
    mask = (labelled & step_mask & selected[:, None]).float()
    weight = bce_weights(labels, labelled, step_mask, selected, pos_weight).to(logits.device)
    targets = labels.to(logits.device).expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    denom = (weight.sum() * num_heads if total_weight is None
             else torch.tensor(float(total_weight), device=logits.device))
    bce_term = scale * (bce * weight).sum() / denom.clamp_min(1e-12)
    lam = reg_lambda if num_heads > 1 else 0.0
    loss = bce_term + lam * penalty
    return loss, {"bce": float(bce_term.detach()), "reg": float(penalty.detach()), "labelled_steps": float(mask.sum())}
