"""Advantage estimators against hand-computed values, step rewards on the right tokens, filters, PPO loss."""
import math

import pytest
import torch

from core.config import ConfigError, validate
from core.models import load_model
from core.steps import split_steps
from rl.algos import (
    ESTIMATORS,
    compute_advantages,
    grpo,
    keep_mask,
    outcome_source,
    ppo_clip_loss,
    register_estimator,
    reinforce_pp,
    returns_to_go,
    rloo,
    step_end_tokens,
)
from rl.config import OnlineConfig
from rl.rollout import Completion, MixedPolicyVersions, assert_single_version

T = torch.tensor


def close(a, b, tol=1e-4):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.allclose(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32), atol=tol), (a, b)


def test_grpo_group_mean_std():
    # group 0: outcomes 1,0,0,1 -> mean .5, unbiased std sqrt(1/3); group 1: 1,1 -> std 0 -> 0 advantage
    out = grpo([T([1.]), T([0.]), T([0.]), T([1.]), T([1.]), T([1.])], [0, 0, 0, 0, 1, 1])
    s = math.sqrt(1 / 3)
    close(out, [[.5 / s], [-.5 / s], [-.5 / s], [.5 / s], [0.], [0.]])


def test_rloo_leave_one_out():
    out = rloo([T([1.]), T([0.]), T([0.]), T([1.])], [0, 0, 0, 0])
    close(out, [[1 - 1 / 3], [0 - 2 / 3], [0 - 2 / 3], [1 - 1 / 3]])
    # process values: baseline = mean of the other samples' pooled step values
    out = rloo([T([.2, .4]), T([1.])], [0, 0])
    close(out, [[.2 - 1, .4 - 1], [1 - .3]])


def test_reinforce_pp_returns_first_then_token_whitening():
    """OpenRLHF: returns on the raw rewards, then (x - token mean) / population std over every token."""
    lengths, groups = [3, 1, 2], [0, 0, 1]
    sources = {"outcome": outcome_source([1.0, 0.0, 1.0], lengths)}
    adv = compute_advantages(sources, {"outcome": 1.0}, groups, lengths, "reinforce_pp")
    # tokens 1,1,1 | 0 | 1,1: mean 5/6, population var 5/36 -> 1 -> 1/sqrt(5), 0 -> -sqrt(5)
    a, b = 1 / math.sqrt(5), -math.sqrt(5)
    close(adv, [[a, a, a], [b], [a, a]])
    assert abs(float(torch.cat(adv).mean())) < 1e-6  # token-mean advantage 0 with unequal lengths
    # process values: returns [1.5, 1.5, 1, 1] and [.2, .2]; token mean .9, population var 1.72 / 6
    sources = {"process": ([T([.5, 1.]), T([.2])], [[1, 3], [1]])}
    adv = compute_advantages(sources, {"process": 2.0}, [0, 0], [4, 2], "reinforce_pp")
    s = math.sqrt(1.72 / 6)
    close(adv, [[2 * .6 / s, 2 * .6 / s, 2 * .1 / s, 2 * .1 / s], [-2 * .7 / s, -2 * .7 / s]])
    assert abs(float(torch.cat(adv).mean())) < 1e-6
    # equal returns everywhere: advantage 0, not nan
    close(reinforce_pp([T([1.]), T([1.])], [[0], [1]], [0, 1], [1, 2]), [[0.], [0., 0.]])


def test_reinforce_pp_whitens_over_the_samples_that_enter_the_loss():
    """Filtered samples (e.g. a group with pass rate 1) do not set the batch statistics: OpenRLHF filters
    before it whitens. Kept tokens 1,1 | 0: mean 2/3, population var 2/9."""
    lengths = [2, 1, 4]
    sources = {"outcome": outcome_source([1.0, 0.0, 1.0], lengths)}
    adv = compute_advantages(sources, {"outcome": 1.0}, [0, 0, 1], lengths, "reinforce_pp", [True, True, False])
    s = math.sqrt(2 / 9)
    close(adv[:2], [[(1 / 3) / s] * 2, [(-2 / 3) / s]])
    assert abs(float(torch.cat(adv[:2]).mean())) < 1e-6


def test_reinforce_pp_data_parallel_reduce_equals_one_batch():
    """Two ranks whiten with the summed [sum, sum of squares, count]: the same advantages as one batch."""
    lengths, outcomes = [3, 1, 2, 4], [1.0, 0.0, 1.0, 0.0]
    whole = compute_advantages({"outcome": outcome_source(outcomes, lengths)}, {"outcome": 1.0}, [0, 0, 1, 1],
                               lengths, "reinforce_pp")
    def rank_stats(ls, os):
        toks = torch.cat([torch.full((n,), o, dtype=torch.float64) for n, o in zip(ls, os)])
        return [float(toks.sum()), float((toks ** 2).sum()), toks.numel()]
    other = rank_stats(lengths[2:], outcomes[2:])
    reduce = lambda stats: [a + b for a, b in zip(stats, other)]  # noqa: E731
    rank0 = compute_advantages({"outcome": outcome_source(outcomes[:2], lengths[:2])}, {"outcome": 1.0}, [0, 0],
                               lengths[:2], "reinforce_pp", None, reduce)
    close(rank0, whole[:2])


def test_zero_length_completion_does_not_raise():
    lengths = [0, 3, 2]
    sources = {"outcome": outcome_source([1.0, 0.0, 1.0], lengths),
               "process": ([T([]), T([.5]), T([.4])], [[], [2], [1]])}
    for estimator in ("grpo", "rloo", "reinforce_pp"):
        adv = compute_advantages(sources, {"outcome": 1.0, "process": 1.0}, [0, 0, 0], lengths, estimator)
        assert [a.numel() for a in adv] == lengths and all(torch.isfinite(a).all() for a in adv)
    # the empty completion takes no part in the token statistics: the other five tokens still average 0
    adv = compute_advantages({"outcome": sources["outcome"]}, {"outcome": 1.0}, [0, 0, 0], lengths, "reinforce_pp")
    assert abs(float(torch.cat(adv).mean())) < 1e-6


def test_returns_to_go_places_values_at_positions():
    close([returns_to_go(T([1., 2.]), [1, 3], 5)], [[3., 3., 2., 2., 0.]])


def test_per_source_baselines_then_weighted_sum():
    # two samples of one group, lengths 4 and 3. outcome 1/0; process step rewards at step ends.
    lengths, groups = [4, 3], [0, 0]
    sources = {"outcome": outcome_source([1.0, 0.0], lengths),
               "process": ([T([.8, .6]), T([.2])], [[1, 3], [2]])}
    adv = compute_advantages(sources, {"outcome": 1.0, "process": 0.5}, groups, lengths, "rloo")
    # outcome rloo: +1 / -1 broadcast. process rloo: sample0 steps (.8-.2, .6-.2) = (.6, .4) -> rtg [1, 1, .4, .4]
    # sample1 step .2 - mean(.8, .6) = -.5 at token 2 -> rtg [-.5, -.5, -.5]
    close(adv, [[1 + .5 * 1.0, 1 + .5 * 1.0, 1 + .5 * .4, 1 + .5 * .4], [-1 - .25, -1 - .25, -1 - .25]])
    # grpo per source: outcome (1, 0) -> mean .5, std .7071; process pooled (.8, .6, .2) -> mean .5333, std .3055
    adv = compute_advantages(sources, {"outcome": 1.0, "process": 1.0}, groups, lengths, "grpo")
    o = .5 / math.sqrt(.5)
    p = torch.tensor([.8, .6, .2])
    z = (p - p.mean()) / p.std()
    close(adv, [[o + z[0] + z[1], o + z[0] + z[1], o + z[1], o + z[1]], [-o + z[2]] * 3])
    # outcome-only: the process source contributes nothing
    adv = compute_advantages(sources, {"outcome": 1.0, "process": 0.0}, groups, lengths, "rloo")
    close(adv, [[1.] * 4, [-1.] * 3])


def test_step_rewards_land_on_each_steps_last_token():
    _, tok = load_model("tiny-random-llama", "fp32")
    text = "7 + 5 = 12\n\n12 * 3 = 36\n\nThe answer is 36."
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    steps = split_steps(text)
    ends = step_end_tokens(tok, ids, tok.decode(ids, skip_special_tokens=True), steps)
    assert len(ends) == 3
    for step, end in zip(steps, ends):
        upto = tok.decode(ids[:end + 1], skip_special_tokens=True)
        assert upto.rstrip().endswith(step), (upto, step)      # the step is complete at this token
        assert not tok.decode(ids[:end], skip_special_tokens=True).rstrip().endswith(step)  # not before
    adv = compute_advantages({"process": ([T([1., 0., 0.])], [ends])}, {"process": 1.0}, [0], [len(ids)], "rloo")[0]
    assert torch.all(adv[:ends[0] + 1] == 1) and torch.all(adv[ends[0] + 1:] == 0)


def test_filters():
    groups, passed = [0, 0, 1, 1, 2, 2], [True, False, True, True, False, False]
    trunc = [False, True, False, False, False, False]
    assert keep_mask(groups, passed, trunc, True, False) == [True, True, False, False, False, False]
    assert keep_mask(groups, passed, trunc, True, True) == [True, False, False, False, False, False]
    assert keep_mask(groups, passed, trunc, False, False) == [True] * 6


def test_ppo_clip_loss_values():
    logp, old = T([0.0, math.log(2.0)]), T([0.0, 0.0])  # ratios 1 and 2
    adv, mask = T([1.0, 1.0]), T([1.0, 1.0])
    loss, m = ppo_clip_loss(logp, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(1.0 + 1.2) / 2)  # the ratio-2 token is clipped to 1.2
    assert m["clipfrac"] == pytest.approx(0.5)
    loss, _ = ppo_clip_loss(logp, old, -adv, mask, clip_eps=0.2)  # negative advantage: min picks -2
    assert loss.item() == pytest.approx((1.0 + 2.0) / 2)
    ref = T([0.0, 0.0])
    loss_kl, m = ppo_clip_loss(logp, old, adv, mask, 0.2, ref, kl_coef=1.0)
    k3 = math.exp(-math.log(2)) + math.log(2) - 1
    assert m["kl"] == pytest.approx(k3 / 2) and loss_kl.item() == pytest.approx(-(2.2) / 2 + k3 / 2)


def test_groups_mixing_policy_versions_are_rejected():
    c = lambda v: Completion("x", [1], [0.0], "stop", v)  # noqa: E731
    assert assert_single_version([[c(3), c(3)], [c(3)]]) == 3
    with pytest.raises(MixedPolicyVersions):
        assert_single_version([[c(3), c(4)]])


# ---- the estimator registry ----------------------------------------------------------------------
@pytest.fixture
def halved_returns():
    """A user's estimator, registered from outside rl/: half the raw return-to-go (no baseline)."""
    @register_estimator("halved_returns")
    def halved(values, positions, groups, lengths, in_batch=None, reduce=None):
        return [0.5 * returns_to_go(v, p, n) for v, p, n in zip(values, positions, lengths)]
    yield "halved_returns"
    ESTIMATORS.pop("halved_returns")


def test_a_registered_estimator_is_valid_config_and_computes_advantages(halved_returns):
    cfg = validate({"algo": {"advantage": halved_returns}}, OnlineConfig)
    lengths = [3, 2]
    sources = {"outcome": outcome_source([1.0, 0.0], lengths), "process": ([T([0.5, 1.0]), T([0.25])], [[0, 2], [1]])}
    adv = compute_advantages(sources, {"outcome": 1.0, "process": 2.0}, [0, 0], lengths, cfg.algo.advantage)
    # outcome 1 everywhere of sample 0, process return-to-go [1.5, 1.0, 1.0] / [0.25, 0.25], each halved
    assert torch.allclose(adv[0], T([0.5 + 1.5, 0.5 + 1.0, 0.5 + 1.0])) and torch.allclose(adv[1], T([0.25, 0.25]))


def test_estimator_names_are_checked_once_and_never_registered_twice(halved_returns):
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        register_estimator("grpo")(lambda *args: [])
    with pytest.raises(ValueError, match="'halved_returns' is already registered"):
        register_estimator(halved_returns)(lambda *args: [])
    with pytest.raises(ConfigError, match="algo.advantage='grpo_typo'.*registered: .*'grpo'"):
        validate({"algo": {"advantage": "grpo_typo"}}, OnlineConfig)
    with pytest.raises(KeyError, match="algo.advantage='grpo_typo'"):
        compute_advantages({}, {}, [0], [1], "grpo_typo")
