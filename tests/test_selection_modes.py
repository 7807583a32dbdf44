"""prm.selection.select_trajectories: the one selection of prm.train and rl.online, values by hand."""
import numpy as np
import pytest
import torch

from prm.config import SelectMode
from prm.selection import select_trajectories

# 4 trajectories x 2 steps. Eq. 5 (delta_pred 0.9, delta_std 0.01), priority = max sigma + (1 - min confidence):
# t0 certain; t1 aleatoric (0.6), priority 0.4; t2 epistemic (sigma 0.05), priority 0.05 + 0.05 = 0.1;
# t3 first predicted error at step 0 (0.2), confidence 0.8 < 0.9, priority 0.2 (step 1 not considered)
MU = torch.tensor([[0.95, 0.97], [0.6, 0.9], [0.95, 0.95], [0.2, 0.5]])
SIGMA = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.05, 0.0], [0.0, 0.5]])
MASK = torch.ones(4, 2, dtype=torch.bool)


def pick(mode, budget=None, rng=None):
    return select_trajectories(mode, MU, SIGMA, MASK, budget, rng, 0.9, 0.01).tolist()


@pytest.mark.parametrize("mode,budget,expected", [
    (SelectMode.uncertain, None, [False, True, True, True]),
    (SelectMode.uncertain, 2, [False, True, False, True]),     # the two most uncertain: t1 (0.4), t3 (0.2)
    (SelectMode.uncertain, 1, [False, True, False, False]),
    (SelectMode.uncertain, 0, [False, False, False, False]),
    (SelectMode.all, None, [True, True, True, True]),
    (SelectMode.all, 3, [True, True, True, False]),
    (SelectMode.none, None, [False, False, False, False]),
])
def test_modes_by_hand(mode, budget, expected):
    assert pick(mode, budget) == expected


def test_random_draws_budget_items_with_the_given_rng():
    drawn = pick(SelectMode.random, 2, np.random.default_rng(7))
    expected = set(np.random.default_rng(7).choice(4, size=2, replace=False).tolist())
    assert drawn == [i in expected for i in range(4)]
    assert sum(pick(SelectMode.random, None, np.random.default_rng(1))) == 4
    with pytest.raises(ValueError, match="rng"):
        pick(SelectMode.random, 2)


def test_string_values_are_the_enum():
    assert pick("uncertain", 2) == pick(SelectMode.uncertain, 2)
