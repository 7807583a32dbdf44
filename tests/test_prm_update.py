"""PRMLearner: the one update used by prm.train and the online loop (tiny-random-llama, DeepSpeed on CPU)."""
import pytest
import torch

from prm.config import PRMConfig, SelectMode
from core.config import TrainerConfig
from tasks.problems import Trajectory
from prm.model import EnsemblePRM
from prm.selection import Selection
from prm.update import PRMLearner

EVERY = Selection(SelectMode.all)   # every (labelled) trajectory trained on


def trajs(n=8):
    return [Trajectory(f"question {i}", [f"step a{i}", f"step b{i}", "step c"], first_error=i % 4 - 1) for i in range(n)]


def learner(mode="frozen", deepspeed=True, **kw):
    cfg = dict(backbone="tiny-random-llama", dtype="fp32", num_heads=4, train_mode=mode, head_lr=1e-2, batch_size=8)
    cfg.update(kw)
    return PRMLearner(EnsemblePRM(PRMConfig(**cfg)), TrainerConfig(deepspeed=deepspeed))


@pytest.mark.parametrize("mode", ["frozen", "full", "lora"])
def test_update_reduces_loss_through_deepspeed(mode):
    lr = learner(mode)
    first = lr.update(trajs(), EVERY)
    for _ in range(15):
        last = lr.update(trajs(), EVERY)
    assert first["selected"] == 8 and first["labelled"] == 8
    assert last["bce"] < first["bce"]


def test_reveal_called_only_for_selected_and_cap_respected():
    lr = learner(delta_pred=0.99)          # everything is uncertain at init
    seen = []

    def reveal(picked):
        seen.extend(picked)
        return [0] * len(picked)
    items = [Trajectory(t.question, t.steps) for t in trajs()]  # unlabelled
    m = lr.update(items, Selection(SelectMode.uncertain, budget=3), reveal=reveal)
    assert m["selected"] == 3 and len(seen) == 3 and m["labelled"] == 3
    assert sum(lr.last_selected) == 3 and [k for k in lr.last_labels if k is not None] == [0, 0, 0]


def test_explicit_mask_and_invalid_labels():
    lr = learner()
    m = lr.update(trajs(4), [True, False, True, False], reveal=lambda picked: [None, 1])
    assert lr.last_selected == [True, False, True, False]
    assert lr.last_labels == [None, None, 1, None] and m["labelled"] == 1


def test_nothing_selected_gives_finite_loss_and_no_change():
    lr = learner(delta_pred=0.0, delta_std=10.0)   # nothing can be uncertain
    before = {k: v.clone() for k, v in lr.prm.heads.state_dict().items()}
    m = lr.update(trajs(), Selection(SelectMode.uncertain))
    assert m["selected"] == 0 and m["loss"] == 0.0
    for k, v in lr.prm.heads.state_dict().items():
        assert torch.equal(v, before[k])


def test_frozen_mode_reuses_cached_features():
    lr = learner()
    calls = []
    original = lr.prm.separator_features
    lr.prm.separator_features = lambda batch: calls.append(1) or original(batch)
    lr.update(trajs(), EVERY)
    n = len(calls)
    lr.update(trajs(), EVERY)
    lr.score([t.question for t in trajs()], [t.steps for t in trajs()])
    assert n >= 1 and len(calls) == n and len(lr.cache) == 8


def test_state_dict_roundtrip_continues_identically():
    a = learner(deepspeed=False)
    a.update(trajs(), EVERY)
    sd = a.state_dict()
    b = learner(deepspeed=False)
    b.load_state_dict(sd)
    ma, mb = a.update(trajs(), EVERY), b.update(trajs(), EVERY)
    assert ma["loss"] == mb["loss"]
    for (k, v), (_, w) in zip(a.prm.heads.state_dict().items(), b.prm.heads.state_dict().items()):
        assert torch.equal(v, w), k


def test_deepspeed_checkpoint_roundtrip(tmp_path):
    a = learner(mode="full")
    a.update(trajs(), EVERY)
    a.save_checkpoint(tmp_path / "ck", {"position": 7})
    b = learner(mode="full")
    assert b.load_checkpoint(tmp_path / "ck") == {"position": 7} and b.global_step == 1
    ma, mb = a.update(trajs(), EVERY), b.update(trajs(), EVERY)
    assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-6)


def test_heads_only_learner_matches_backbone_learner_on_cached_features(tmp_path):
    """A heads-only PRM (no backbone) fed the same cached features goes through the same update and
    scoring code and gives the same numbers as the frozen PRM that computed them; a missing item raises."""
    from prm.model import EnsemblePRM as E
    full = learner(deepspeed=False)
    items = trajs(8)
    full.features(items)                                       # fills full.cache from the backbone
    cfg = PRMConfig(**{**full.cfg.__dict__})
    light = PRMLearner(E.heads_only(cfg, full.prm.hidden_size), TrainerConfig(deepspeed=False), cache=full.cache)
    assert not light.prm.has_backbone
    light.prm.heads.load_state_dict(full.prm.heads.state_dict())
    for _ in range(3):
        m_full, m_light = full.update(items, EVERY), light.update(items, EVERY)
        assert m_full["loss"] == pytest.approx(m_light["loss"], rel=1e-5)
    qs, ss = [t.question for t in items], [t.steps for t in items]
    a, b = full.score(qs, ss), light.score(qs, ss)
    assert [v for s in a for v in s.mean] == pytest.approx([v for s in b for v in s.mean], abs=1e-6)
    light.prm.save(tmp_path / "p")
    again = E.load(tmp_path / "p", heads_only=True)
    assert torch.equal(again.heads.w1, light.prm.heads.w1)
    with pytest.raises(RuntimeError, match="heads-only"):
        light.score(["an unseen question"], [["x"]])
    with pytest.raises(ValueError):
        E.heads_only(PRMConfig(train_mode="full"), 64)


@pytest.mark.parametrize("deepspeed", [False, True])
def test_update_steps_reuses_the_labelled_batch(deepspeed):
    """prm.update_steps=3: one call takes three optimizer steps on its labels and leaves a lower loss on
    that batch than one step from the same init; the labels are asked for once."""
    one, three = learner(deepspeed=deepspeed), learner(deepspeed=deepspeed, update_steps=3)
    reveals = []

    def reveal(picked):
        reveals.append(len(picked))
        return [t.first_error for t in trajs()]
    first = [lr.update(trajs(), EVERY, reveal=reveal) for lr in (one, three)]
    assert first[0]["bce"] == first[1]["bce"] and reveals == [8, 8]
    assert (one.global_step, three.global_step) == (1, 3)
    if deepspeed:
        assert (one.engine.global_steps, three.engine.global_steps) == (1, 3)
    else:
        w1 = [float(lr.optimizer.state[lr.prm.heads.w1]["step"]) for lr in (one, three)]
        assert w1 == [1.0, 3.0]
    after = [lr.update(trajs(), EVERY)["bce"] for lr in (one, three)]  # this call's pre-step loss
    assert after[1] < after[0] < first[0]["bce"]


def test_update_steps_below_one_rejected():
    with pytest.raises(ValueError, match="update_steps must be >= 1"):
        PRMConfig(update_steps=0)
