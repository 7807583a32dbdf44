"""prm.step_features=hidden_logprob: the heads also read the backbone's own log min / log mean token
probability of each step, computed on the PRM's forward pass. Pinned against a plain recomputation: the
causal LM run on the same ids, each step's tokens found by tokenizing the step alone."""
import math

import pytest
import torch

from prm.config import PRMConfig, StepFeatures
from prm.features import FeatureCache
from prm.model import LOGPROB_FLOOR, EnsemblePRM
from prm.update import PRMLearner

QS = ["What is 2 + 3?", "Compute 7 * 8, please."]
SS = [["2 + 3 = 5", "The answer is 5."], ["7 * 8 = 56", "so", "The answer is 56."]]


def make(mode="frozen", features=StepFeatures.hidden_logprob, **kw) -> EnsemblePRM:
    return EnsemblePRM(PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=3, head_hidden=8, train_mode=mode,
                                 step_features=features, batch_size=2, **kw))


def expected(prm: EnsemblePRM, question: str, steps: list[str]) -> list[tuple[float, float]]:
    """By hand: logits of the whole LM on the PRM's ids; step k = its own tokens right before separator k."""
    ids, positions = prm.encode(question, steps)
    with torch.no_grad():
        logp = prm._lm[0](input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    out = []
    for step, sep in zip(steps, positions):
        n = len(prm.tokenizer(step, add_special_tokens=False).input_ids)
        lps = [max(logp[t - 1, ids[t]].item(), LOGPROB_FLOOR) for t in range(sep - n, sep)]
        out.append((min(lps), sum(lps) / len(lps)))
    return out


@pytest.mark.parametrize("layout", ["padded", "bucketed", "packed"])
def test_logprob_columns_match_a_plain_recomputation(layout):
    prm = make()
    batch = prm.collate([prm.encode(q, s) for q, s in zip(QS, SS)], layout=layout, questions=QS)
    feats = prm.separator_features(batch)
    assert feats.shape == (5, prm.hidden_size + 2)
    want = [v for q, s in zip(QS, SS) for v in expected(prm, q, s)]
    assert torch.allclose(feats[:, -2:], torch.tensor(want), atol=1e-4)
    # the hidden part is what step_features=hidden gives
    plain = EnsemblePRM(PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=3, head_hidden=8))
    hidden = plain.separator_features(plain.collate([plain.encode(q, s) for q, s in zip(QS, SS)], layout=layout))
    assert torch.allclose(feats[:, :-2], hidden, atol=1e-5)


def test_cached_features_scores_and_save_load_agree(tmp_path):
    prm = make()
    assert prm.heads.w1.shape[1] == prm.hidden_size + 2
    direct = prm.score(QS, SS)
    learner = PRMLearner(prm, cache=FeatureCache(prm.cfg.max_length, dtype=torch.float32))
    cached = learner.score(QS, SS)
    for a, b in zip(direct, cached):
        assert all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(a.mean, b.mean))
    prm.save(tmp_path / "p")
    again = EnsemblePRM.load(tmp_path / "p")
    assert again.cfg.step_features == StepFeatures.hidden_logprob
    assert [x for s in again.score(QS, SS) for x in s.mean] == pytest.approx([x for s in direct for x in s.mean], abs=1e-6)
    heads = EnsemblePRM.load(tmp_path / "p", heads_only=True)
    assert heads.heads.w1.shape == prm.heads.w1.shape


def test_collate_without_questions_and_prefix_cache_refuse():
    from prm.prefix_cache import PrefixCachedScorer
    prm = make()
    with pytest.raises(ValueError, match="questions"):
        prm.collate([prm.encode(QS[0], SS[0])])
    with pytest.raises(ValueError, match="step_features"):
        PrefixCachedScorer(prm)


def test_full_mode_trains_through_the_logprob_columns():
    prm = make("full")
    batch = prm.collate([prm.encode(q, s) for q, s in zip(QS, SS)], questions=QS)
    prm.separator_features(batch)[:, -2:].sum().backward()
    assert prm.body.get_input_embeddings().weight.grad.abs().sum() > 0


def test_policy_logprob_columns_stay_the_initial_backbones_while_the_body_trains(tmp_path):
    """hidden_policy_logprob + train_mode=full: the hidden part moves with the trained body, the log-prob
    columns stay those of the untouched backbone (pinned by hand on a fresh frozen copy), take no gradient,
    and survive save / load of the trained backbone."""
    prm = make("full", StepFeatures.hidden_policy_logprob)
    initial = make()                                   # the same backbone, never trained: hand computation
    want = torch.tensor([v for q, s in zip(QS, SS) for v in expected(initial, q, s)])
    with torch.no_grad():                              # "training" moved the body and its LM head
        for p in prm.body.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = prm.collate([prm.encode(q, s) for q, s in zip(QS, SS)], questions=QS)
    feats = prm.separator_features(batch)
    assert torch.allclose(feats[:, -2:], want, atol=1e-4)
    moved = torch.tensor([v for q, s in zip(QS, SS) for v in expected(prm, q, s)])
    assert not torch.allclose(moved, want, atol=1e-3)  # hidden_logprob would have read these instead
    feats[:, -2:].sum().backward()                     # no gradient reaches the trained body from the columns
    assert all(p.grad is None or not p.grad.any() for p in prm.body.parameters())
    assert all(not p.requires_grad for p in prm._reference[0].parameters())
    assert not any(n.startswith("_reference") for n, _ in prm.named_parameters())   # never trained or saved
    prm.save(tmp_path / "p")
    again = EnsemblePRM.load(tmp_path / "p")
    again_feats = again.separator_features(again.collate([again.encode(q, s) for q, s in zip(QS, SS)], questions=QS))
    assert torch.allclose(again_feats, feats, atol=1e-4)


def test_policy_logprob_under_a_frozen_backbone_is_hidden_logprob():
    prm = make("frozen", StepFeatures.hidden_policy_logprob)
    assert prm._reference[0] is None
    plain = make()
    a = prm.separator_features(prm.collate([prm.encode(q, s) for q, s in zip(QS, SS)], questions=QS))
    b = plain.separator_features(plain.collate([plain.encode(q, s) for q, s in zip(QS, SS)], questions=QS))
    assert torch.allclose(a, b, atol=1e-6)
