"""Credit forms of the process source (rl/credit.py) x every estimator (rl/algos.py), against hand computations.

One group of two samples: A has step rewards [.8, .2] at tokens 0 and 2 of 3 tokens, B [.9, .6] at tokens 0 and 1
of 2 tokens. Under the forms (threshold .5, T = 0):
    sum          A [.8, .2]   B [.9, .6]
    min          A [0, .2]    B [0, .6]     (all of the softmax(-r/T) weight on each sample's worst step)
    first_error  A [0, -1]    B [0, 0]      (A's step 1 is its first below .5; B has none)
"""
import math

import pytest
import torch

from rl.algos import compute_advantages
from rl.credit import credit_values, first_error_penalty, min_form, scale_process

T = torch.tensor
VALUES = [T([.8, .2]), T([.9, .6])]
POSITIONS, LENGTHS, GROUPS = [[0, 2], [0, 1]], [3, 2], [0, 0]


def advantages(form: str, estimator: str) -> list[torch.Tensor]:
    values = credit_values(VALUES, form, temperature=0.0, threshold=0.5)
    return compute_advantages({"process": (values, POSITIONS)}, {"process": 1.0}, GROUPS, LENGTHS, estimator)


def close(got, want, tol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.allclose(g, torch.tensor(w, dtype=torch.float32), atol=tol), (got, want)


def test_forms_transform_the_step_rewards():
    close(credit_values(VALUES, "sum"), [[.8, .2], [.9, .6]])
    close(credit_values(VALUES, "min", temperature=0.0), [[0., .2], [0., .6]])
    close(credit_values(VALUES, "first_error", threshold=0.5), [[0., -1.], [0., 0.]])
    # PURE's soft weights at T = .1: w = softmax(-r / T)
    w0, w1 = math.exp(-8), math.exp(-2)
    close([min_form(T([.8, .2]), 0.1)], [[.8 * w0 / (w0 + w1), .2 * w1 / (w0 + w1)]])
    # ties: the first minimum takes the weight; the first error is the first step below the threshold
    close([min_form(T([.3, .3, .9]), 0.0)], [[.3, 0., 0.]])
    close([first_error_penalty(T([.9, .1, .2]), .5)], [[0., -1., 0.]])
    assert min_form(torch.zeros(0), 0.1).numel() == 0 and first_error_penalty(torch.zeros(0), .5).numel() == 0


def test_min_form_return_is_the_worst_reward_up_to_the_worst_step_and_zero_after():
    """T -> 0: the sum-form return of the transformed rewards at step t is min_k r_k for t <= argmin, else 0."""
    rewards = T([.7, .9, .1, .8])
    returns = min_form(rewards, 0.0).flip(0).cumsum(0).flip(0)
    close([returns], [[.1, .1, .1, 0.]])
    soft = min_form(rewards, 0.01).flip(0).cumsum(0).flip(0)   # T = .01: within 1e-3 of that limit
    assert torch.allclose(soft, returns, atol=1e-3)


def test_grpo_per_form():
    s = math.sqrt(.2875 / 3)     # values .8 .2 .9 .6: mean .625, squared deviations sum .2875, unbiased
    close(advantages("sum", "grpo"), [[(.175 - .425) / s, -.425 / s, -.425 / s], [(.275 - .025) / s, -.025 / s]])
    s = math.sqrt(.24 / 3)       # 0 .2 0 .6: mean .2, squared deviations .04 + 0 + .04 + .16
    close(advantages("min", "grpo"), [[-.2 / s, 0., 0.], [.2 / s, .4 / s]])
    # 0 -1 0 0: mean -.25, squared deviations .75, std .5 -> [.5, -1.5] and [.5, .5]
    close(advantages("first_error", "grpo"), [[-1., -1.5, -1.5], [1., .5]])


def test_rloo_per_form():
    close(advantages("sum", "rloo"), [[-.5, -.55, -.55], [.5, .1]])          # baselines .75 (B) and .5 (A)
    close(advantages("min", "rloo"), [[-.4, -.1, -.1], [.4, .5]])            # baselines .3 and .1
    close(advantages("first_error", "rloo"), [[-1., -1., -1.], [1., .5]])    # baselines 0 and -.5


def test_reinforce_pp_per_form():
    r = 1 / math.sqrt(1.24 / 5)  # returns 1 .2 .2 | 1.5 .6: mean .7, population variance 1.24 / 5
    close(advantages("sum", "reinforce_pp"), [[.3 * r, -.5 * r, -.5 * r], [.8 * r, -.1 * r]])
    r = 1 / math.sqrt(.192 / 5)  # .2 .2 .2 | .6 .6: mean .36
    close(advantages("min", "reinforce_pp"), [[-.16 * r] * 3, [.24 * r] * 2])
    r = 1 / math.sqrt(1.2 / 5)   # -1 -1 -1 | 0 0: mean -.6
    close(advantages("first_error", "reinforce_pp"), [[-.4 * r] * 3, [.6 * r] * 2])


def test_scale_process_sets_the_size_relative_to_the_outcome():
    process, outcome = [T([2., -2.]), T([4.])], [T([1., 1.]), T([-1.])]
    scaled, ratio = scale_process(process, outcome, 0.5)
    assert ratio == pytest.approx(8 / 3)                     # mean |A|: 8/3 against 1 over the same tokens
    close(scaled, [[.375, -.375], [.75]])                    # now mean |A| = 1.5 / 3 = .5
    # only the samples that enter the loss set the sizes; the others are rescaled alike
    scaled, ratio = scale_process(process, outcome, 1.0, in_batch=[True, False])
    assert ratio == pytest.approx(2.0)
    close(scaled, [[1., -1.], [2.]])
    # no outcome signal in the batch: the process advantages are only multiplied by the scale
    scaled, ratio = scale_process(process, [T([0., 0.]), T([0.])], 0.5)
    assert math.isnan(ratio)
    close(scaled, [[1., -1.], [2.]])
    # ranks: the sums go through `reduce` (here another rank adds |A_p| 4 and |A_o| 2)
    scaled, ratio = scale_process(process, outcome, 1.0, reduce=lambda s: [s[0] + 4, s[1] + 2])
    assert ratio == pytest.approx(12 / 5)
