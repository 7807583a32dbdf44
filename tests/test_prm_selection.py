"""Eq. 5 selection and Eq. 4 loss on hand-computed cases."""
import pytest
import torch

from prm.selection import considered_steps, prm_loss, select_uncertain, step_labels, uncertainty_priority


def t(rows):
    return torch.tensor(rows, dtype=torch.float)


def test_eq5_hand_cases():
    mu = t([[0.99, 0.98, 0.97],    # confident, all correct -> dropped
            [0.99, 0.60, 0.99],    # step 1 unsure (max(0.6, 0.4) < 0.9) -> aleatoric
            [0.99, 0.02, 0.55],    # first predicted error at 1 (confident); step 2 unsure but after i*
            [0.95, 0.95, 0.95],    # confident but heads disagree on step 0 -> epistemic
            [0.99, 0.99, 0.00]])   # padding slot at 2 would look unsure: masked
    sigma = t([[0.0] * 3, [0.0] * 3, [0.0, 0.0, 0.5], [0.02, 0.0, 0.0], [0.0, 0.0, 0.3]])
    mask = torch.tensor([[True] * 3] * 4 + [[True, True, False]])
    selected = select_uncertain(mu, sigma, mask, delta_pred=0.9, delta_std=0.01)
    assert selected.tolist() == [False, True, False, True, False]
    considered = considered_steps(mu, mask)
    assert considered[2].tolist() == [True, True, False]  # steps after the first predicted error ignored
    assert considered[0].tolist() == [True, True, True]   # no predicted error: all steps


def test_eq5_first_step_error_ignores_everything_after():
    mu, sigma = t([[0.3, 0.5, 0.5]]), t([[0.0, 0.9, 0.9]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert select_uncertain(mu, sigma, mask, 0.6, 0.01).tolist() == [False]   # max(.3,.7)=.7 >= .6
    assert select_uncertain(mu, sigma, mask, 0.8, 0.01).tolist() == [True]    # .7 < .8


def test_priority_ranks_more_uncertain_higher():
    mu, sigma = t([[0.99, 0.99], [0.6, 0.99]]), t([[0.05, 0.0], [0.0, 0.0]])
    p = uncertainty_priority(mu, sigma, torch.ones(2, 2, dtype=torch.bool))
    assert p[1] > p[0]


def test_step_labels_cut_after_first_error():
    labels, labelled = step_labels([-1, 1, None, 0], width=3)
    assert labels.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert labelled.tolist() == [[True] * 3, [True, True, False], [False] * 3, [True, False, False]]


def _case():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 3, requires_grad=True)   # K=3, B=2, S=3
    labels, labelled = step_labels([1, -1], 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    return logits, labels, labelled, mask


def test_loss_only_on_selected_and_labelled_positions():
    logits, labels, labelled, mask = _case()
    selected = torch.tensor([True, False])
    loss, parts = prm_loss(logits, torch.tensor(0.0), labels, labelled, mask, selected, reg_lambda=0.5)
    loss.backward()
    g = logits.grad
    assert torch.all(g[:, 1] == 0)             # unselected trajectory: no gradient
    assert torch.all(g[:, 0, 2] == 0)          # step after the first error: no gradient
    assert torch.all(g[:, 0, :2] != 0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, 0, :2], torch.tensor([1.0, 0.0]).expand(3, 2))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert parts["labelled_steps"] == 2


def test_empty_selection_is_finite_and_differentiable():
    logits, labels, labelled, mask = _case()
    penalty = torch.tensor(0.2, requires_grad=True)
    loss, parts = prm_loss(logits, penalty, labels, labelled, mask, torch.tensor([False, False]), reg_lambda=0.5)
    assert torch.isfinite(loss) and float(loss) == pytest.approx(0.1) and parts["bce"] == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_regulariser_weighted_by_lambda_and_off_for_k1():
    logits, labels, labelled, mask = _case()
    sel = torch.tensor([True, True])
    pen = torch.tensor(0.3)
    l0, _ = prm_loss(logits, pen, labels, labelled, mask, sel, reg_lambda=0.0)
    l1, _ = prm_loss(logits, pen, labels, labelled, mask, sel, reg_lambda=1.0)
    assert float(l1 - l0) == pytest.approx(0.3, rel=1e-5)
    one = logits[:1]
    k1a, _ = prm_loss(one, pen, labels, labelled, mask, sel, reg_lambda=0.0)
    k1b, _ = prm_loss(one, pen, labels, labelled, mask, sel, reg_lambda=1.0)
    assert float(k1a) == float(k1b)


def test_pos_weight_downweights_correct_steps():
    logits = torch.zeros(1, 1, 3)  # bce = log 2 everywhere
    labels, labelled = step_labels([2], 3)
    sel, mask = torch.tensor([True]), torch.ones(1, 3, dtype=torch.bool)
    logits_neg = logits.clone()
    logits_neg[0, 0, 2] = 2.0  # make the error step costlier: its share of the mean grows with lower pos_weight
    l_even, _ = prm_loss(logits_neg, torch.tensor(0.0), labels, labelled, mask, sel, pos_weight=1.0)
    l_bal, _ = prm_loss(logits_neg, torch.tensor(0.0), labels, labelled, mask, sel, pos_weight=0.1)
    assert float(l_bal) > float(l_even)


def test_ensemble_std_is_unbiased_and_k1_is_zero():
    """sigma = torch.std over heads (N - 1) as ActivePRM's trainer: heads .9 and .7 -> sqrt(.02 / 1)."""
    from prm.model import _to_scores
    from prm.selection import ensemble_stats
    logits = torch.logit(t([[[0.9, 0.5]], [[0.7, 0.5]]]))  # [K=2, B=1, S=2]
    mu, sigma = ensemble_stats(logits)
    assert torch.allclose(mu, t([[0.8, 0.5]]), atol=1e-6)
    assert torch.allclose(sigma, t([[0.02 ** 0.5, 0.0]]), atol=1e-6)  # population would give 0.1
    # the unbiased std decides Eq. 5 here: 0.1414 > 0.12 > 0.1
    assert select_uncertain(t([[0.95]]), sigma[:, :1], torch.ones(1, 1, dtype=torch.bool), 0.9, 0.12).tolist() == [True]
    scores = _to_scores(logits[:, 0, :])  # the scoring path uses the same std
    assert scores.std == pytest.approx([0.02 ** 0.5, 0.0], abs=1e-6)
    mu1, sigma1 = ensemble_stats(logits[:1])  # K = 1: exactly 0, never nan
    assert sigma1.tolist() == [[0.0, 0.0]] and _to_scores(logits[:1, 0, :]).std == [0.0, 0.0]
