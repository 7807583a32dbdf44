"""PRM training batches without padding (prm.batching): bucketed and packed give the padded path's
separator features, loss and gradients on the same data; pad fractions pinned by hand."""
import pytest
import torch

from prm import batching
from core.config import ConfigError, TrainerConfig, validate
from prm.config import PRMConfig
from tasks.problems import Trajectory
from prm.model import EnsemblePRM
from prm.selection import prm_loss, step_labels
from prm.update import PRMLearner

TINY = dict(backbone="tiny-random-llama", dtype="fp32", num_heads=4, train_mode="full", reg_lambda=0.5)
TRAJS = [Trajectory("What is 2+2?", ["2+2=4", "So the answer is 4"], -1),
         Trajectory("A much longer question about apples and oranges and pears, twelve of them in all?",
                    ["There are 12 fruits.", "Half are apples: 6.", "So 6 are not apples.", "The answer is 6."], 2),
         Trajectory("q", ["x"], 0),
         Trajectory("Compute 7*8.", ["7*8=54", "The answer is 54"], 0),
         Trajectory("Sum 1..4?", ["1+2+3+4", "= 10", "The answer is 10"], -1)]


def test_pad_fraction_and_rows_by_hand():
    enc = [([1, 2, 3], [2]), ([1, 2, 3, 4, 5], [1, 4]), ([1] * 8, [7])]   # 16 real tokens
    pad = batching.build(enc, 0, "padded")
    assert pad.input_ids.shape == (3, 8) and pad.pad_fraction == pytest.approx(1 - 16 / 24)
    # sorted 3, 5, 8: [3, 5] would pad 2 of 10 (> 10 %): every sequence alone, no pad
    buck = batching.build(enc, 0, "bucketed", max_tokens=2048)
    assert [p.input_ids.shape for p in buck.parts] == [(1, 3), (1, 5), (1, 8)] and buck.pad_fraction == 0.0
    enc2 = enc + [([1] * 8, [3]), ([1] * 10, [0])]   # 8, 8 join (no pad); 10 would pad 4 of 30 (13 %): alone
    buck = batching.build(enc2, 0, "bucketed", max_tokens=2048)
    assert [p.input_ids.shape for p in buck.parts] == [(1, 3), (1, 5), (2, 8), (1, 10)]
    enc3 = enc + [([1] * 8, [3]), ([1] * 9, [0])]    # 9 joins the 8s: 2 pad of 27 (7 %)
    buck = batching.build(enc3, 0, "bucketed", max_tokens=2048)
    assert [p.input_ids.shape for p in buck.parts] == [(1, 3), (1, 5), (3, 9)]
    assert buck.pad_fraction == pytest.approx(2 / (3 + 5 + 27))
    buck = batching.build(enc3, 0, "bucketed", max_tokens=15)   # the token budget splits the 8s
    assert [p.input_ids.shape for p in buck.parts] == [(1, 3), (1, 5), (1, 8), (1, 8), (1, 9)]
    # first-fit decreasing into 16 tokens: 8, then 5 (13), then 3 (16): one row, no pad
    pack = batching.build(enc, 0, "packed", max_tokens=16)
    assert pack.input_ids.shape == (1, 16) and pack.pad_fraction == 0.0 and pack.attention_mask is None
    assert pack.position_ids[0].tolist() == list(range(8)) + list(range(5)) + list(range(3))
    assert pack.input_ids[0, pack.positions].tolist() == [3, 2, 5, 1]   # separators of seq 0, 1, 1, 2 in batch order
    # budget 9: rows [8], [5, 3]; the 8-row is full, the other has a pad tail with its own positions 0
    pack = batching.build(enc, 0, "packed", max_tokens=9)
    assert pack.input_ids.shape == (2, 8) and pack.pad_fraction == pytest.approx(0.0)
    pack = batching.build(enc, 0, "packed", max_tokens=7)     # 8 alone, 5 alone, 3 alone padded to 8
    assert pack.input_ids.shape == (3, 8) and pack.position_ids[1].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert pack.pad_fraction == pytest.approx(1 - 16 / 24)


def _loss_and_grads(prm: EnsemblePRM, layout: str):
    prm.zero_grad(set_to_none=True)
    encoded = [prm.encode(t.question, t.steps) for t in TRAJS]
    batch = prm.collate(encoded, layout=layout)
    logits, penalty = prm(batch)
    labels, labelled = step_labels([t.first_error for t in TRAJS], batch.step_mask.shape[1])
    labelled &= batch.step_mask
    chosen = torch.ones(len(TRAJS), dtype=torch.bool)
    loss, _ = prm_loss(logits, penalty, labels, labelled, batch.step_mask, chosen, 0.5, 1.0)
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in prm.named_parameters() if p.grad is not None}, batch


@pytest.mark.parametrize("layout,pack_tokens", [("bucketed", 2048), ("bucketed", 90), ("packed", 2048), ("packed", 120)])
def test_layouts_give_the_padded_loss_and_gradients(layout, pack_tokens):
    prm = EnsemblePRM(PRMConfig(**TINY, pack_tokens=pack_tokens))
    with torch.no_grad():  # non-zero anchor distance so the regulariser's gradient is in play too
        prm.heads.w1.add_(0.01)
    ref_logits, ref_loss, ref_grads, ref_batch = _loss_and_grads(prm, "padded")
    logits, loss, grads, batch = _loss_and_grads(prm, layout)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and any(n.startswith("body.") for n in grads)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert batch.pad_fraction < ref_batch.pad_fraction
    if layout == "packed" and pack_tokens == 2048:
        assert batch.input_ids.shape[0] == 1 and batch.pad_fraction == 0.0


def test_a_packed_sequence_does_not_see_its_neighbours():
    prm = EnsemblePRM(PRMConfig(**TINY))
    a = prm.encode("q", ["s1", "s2"])   # the shortest: first-fit decreasing puts it after its neighbour
    b, b_changed = (prm.encode(q, ["a long first step here", "t1"]) for q in ("question two?", "another question!"))
    with torch.no_grad():
        f1 = prm.separator_features(prm.collate([b, a], layout="packed"))
        f2 = prm.separator_features(prm.collate([b_changed, a], layout="packed"))
        alone = prm.separator_features(prm.collate([a], layout="padded"))
    assert prm.collate([b, a], layout="packed").input_ids.shape[0] == 1          # one row: a sits after b
    torch.testing.assert_close(f1[-2:], alone, rtol=0, atol=1e-5)              # a's separators, batch order
    torch.testing.assert_close(f2[-2:], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(f1[0], f2[0], atol=1e-3)


@pytest.mark.parametrize("layout", ["bucketed", "packed"])
def test_learner_updates_agree_across_layouts(layout):
    """Two identical learners, one padded: same metrics and weights after two updates (two steps each)."""
    states = {}
    for layout in ("padded", layout):
        torch.manual_seed(0)
        learner = PRMLearner(EnsemblePRM(PRMConfig(**TINY, batch_layout=layout, update_steps=2)),
                             TrainerConfig(deepspeed=False))
        metrics = [learner.update(TRAJS, [True] * len(TRAJS)) for _ in range(2)]
        states[layout] = (metrics, {k: v.clone() for k, v in learner.prm.state_dict().items()})
    (m_pad, w_pad), (m_pack, w_pack) = states["padded"], states[layout]
    for a, b in zip(m_pad, m_pack):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["labelled"] == b["labelled"]
    for name in w_pad:
        torch.testing.assert_close(w_pack[name], w_pad[name], rtol=0, atol=1e-5, msg=name)


def test_unknown_layout_is_a_config_error():
    with pytest.raises(ConfigError, match="batch_layout"):
        validate({"batch_layout": "ragged"}, PRMConfig)
    with pytest.raises(ValueError, match="ragged"):
        batching.build([([1, 2], [1])], 0, "ragged")
