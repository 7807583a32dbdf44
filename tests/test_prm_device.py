"""prm.device: validated at config time, the model and every batch on it, scores back on CPU (CPU-only checks)."""
import json

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from core.config import ConfigError, TrainerConfig, validate
from prm.config import PRMConfig, PRMTrainConfig, SelectMode
from tasks.problems import Trajectory
from prm.model import EnsemblePRM, PRMBatch
from prm.selection import Selection
from prm.update import PRMLearner

EVERY = Selection(SelectMode.all)   # every (labelled) trajectory trained on
from rl.config import OnlineConfig

TINY = dict(backbone="tiny-random-llama", dtype="fp32", num_heads=4)
QS, SS = ["What is 2+2?", "q"], [["2+2=4", "So 4"], ["x", "y", "z"]]


@pytest.mark.parametrize("bad", ["gpu", "CPU", "cuda:", "cuda:x", "cuda0", "cuda:-1", "mps", ""])
def test_malformed_device_rejected(bad):
    with pytest.raises(ConfigError, match="prm.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        PRMConfig(device=bad)


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_fails_fast_from_the_command_line(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, schema in (("prm_train", PRMTrainConfig), ("online", OnlineConfig)):
        with initialize_config_module(config_module="configs", version_base=None):
            raw = OmegaConf.to_container(compose(config_name=name, overrides=[f"prm.device={device}"]), resolve=True)
        with pytest.raises(ConfigError, match=r"torch.cuda.is_available\(\) is False"):
            validate(raw, schema)


def test_cuda_index_beyond_visible_devices_rejected(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    PRMConfig(device="cuda:0")
    with pytest.raises(ConfigError, match="only 1 CUDA device"):
        PRMConfig(device="cuda:1")


def test_cpu_scores_unchanged():
    """The values this tiny PRM scored before prm.device existed (same seed, same inputs)."""
    prm = EnsemblePRM(PRMConfig(**TINY, device="cpu"))
    assert prm.device == torch.device("cpu")
    got = prm.score(QS, SS)
    # stds pinned as the population std over the K = 4 heads; the ensemble std is now the unbiased one
    # (N - 1, as ActivePRM's torch.std): the population std times sqrt(K / (K - 1))
    expected = [([0.498002, 0.498779], [0.007485, 0.007882]),
                ([0.499059, 0.499334, 0.498953], [0.008206, 0.00855, 0.008422])]
    expected = [(mean, [v * (4 / 3) ** 0.5 for v in std]) for mean, std in expected]
    for s, (mean, std) in zip(got, expected):
        assert all(isinstance(v, float) for v in s.mean + s.std)
        torch.testing.assert_close(torch.tensor(s.mean), torch.tensor(mean), rtol=0, atol=2e-6)
        torch.testing.assert_close(torch.tensor(s.std), torch.tensor(std), rtol=0, atol=2e-6)


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_every_batch_reaching_the_model_was_moved_to_its_device(monkeypatch, mode):
    """collate (and the cached-feature batches) build on CPU; what the backbone and the heads see must
    be the output of PRMBatch.to(model.device). Fails if a batch goes in where it was built."""
    moved: list[tuple[PRMBatch, torch.device]] = []
    original_to = PRMBatch.to

    def spy_to(self, device):
        out = original_to(self, device)
        moved.append((out, torch.device(device)))
        return out
    monkeypatch.setattr(PRMBatch, "to", spy_to)
    learner = PRMLearner(EnsemblePRM(PRMConfig(**TINY, train_mode=mode)), TrainerConfig(deepspeed=False))
    prm, seen = learner.prm, []

    def placed_on(batch):
        return next((device for b, device in moved if b is batch), None)
    for name in ("forward", "separator_features"):
        original = getattr(prm, name)
        monkeypatch.setattr(prm, name, lambda batch, f=original: seen.append(placed_on(batch)) or f(batch))
    trajs = [Trajectory(q, s, first_error=-1) for q, s in zip(QS, SS)]
    learner.update(trajs, EVERY)
    scores = learner.score(QS, SS)
    prm.score(QS, SS)
    assert len(seen) >= 3 and seen == [prm.device] * len(seen)
    assert all(isinstance(v, float) for s in scores for v in s.mean)


def test_saved_on_another_device_loads_here(tmp_path):
    """A PRM saved by a CUDA run (prm.json says cuda) loads on this machine with the device it asks for."""
    prm = EnsemblePRM(PRMConfig(**TINY, seed=3))
    before = prm.score(QS, SS)
    prm.save(tmp_path / "prm")
    meta = json.loads((tmp_path / "prm" / "prm.json").read_text())
    meta["config"]["device"] = "cuda:0"
    (tmp_path / "prm" / "prm.json").write_text(json.dumps(meta))
    for heads_only in (False, True):
        loaded = EnsemblePRM.load(tmp_path / "prm", heads_only=heads_only, device="cpu")
        assert loaded.cfg.device == "cpu" and loaded.device == torch.device("cpu")
    after = EnsemblePRM.load(tmp_path / "prm").score(QS, SS)
    assert [(s.mean, s.std) for s in after] == [(s.mean, s.std) for s in before]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="is_available"):
            EnsemblePRM.load(tmp_path / "prm", device="cuda")


def test_learner_checkpoint_is_read_to_cpu_then_copied(monkeypatch, tmp_path):
    """map_location='cpu': a learner.pt written on a GPU must load on a CPU-only machine (and its RNG
    client state must stay a CPU tensor on a GPU one)."""
    learner = PRMLearner(EnsemblePRM(PRMConfig(**TINY)), TrainerConfig(deepspeed=False))
    learner.update([Trajectory(q, s, first_error=0) for q, s in zip(QS, SS)], EVERY)
    learner.save_checkpoint(tmp_path / "ckpt", {"rng_torch": torch.get_rng_state()})
    calls, original_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw.get("map_location")) or original_load(*a, **kw))
    state = learner.load_checkpoint(tmp_path / "ckpt")
    assert calls == ["cpu"] and state["rng_torch"].device == torch.device("cpu")
