"""trainer.dist_timeout_min reaches every process-group init, and the object collectives run on a gloo group
beside an NCCL default group (faked: no GPU here), so a long phase on rank 0 never trips NCCL's watchdog."""
from __future__ import annotations

import datetime

import pytest
import torch

import core.distributed as dist_mod
from core.config import ConfigError, TrainerConfig, validate
from core.distributed import Ranks


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return f"<{name} group>"
        return record


@pytest.fixture
def fake_nccl(monkeypatch):
    """A fresh process on a 2-GPU launch: nothing initialised, CUDA visible, two ranks."""
    import deepspeed

    rec = Recorder()
    monkeypatch.setattr(dist_mod, "_OBJECT_GROUP", None)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(deepspeed, "init_distributed", rec("init"))
    monkeypatch.setattr(torch.distributed, "new_group", rec("new_group"))
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500"), ("RANK", "0"), ("WORLD_SIZE", "2"),
                       ("LOCAL_RANK", "0")):   # set (and restored) here: init_distributed fills in missing ones
        monkeypatch.setenv(key, value)
    return rec


def test_timeout_reaches_the_process_group_init_and_objects_go_over_gloo(fake_nccl, monkeypatch):
    dist_mod.init_distributed(timeout_min=90)
    (name, _, init_kwargs), (group_name, _, group_kwargs) = fake_nccl.calls
    assert name == "init" and init_kwargs == {"dist_backend": "nccl", "timeout": datetime.timedelta(minutes=90)}
    assert group_name == "new_group" and group_kwargs == {"backend": "gloo", "timeout": datetime.timedelta(minutes=90)}
    assert dist_mod.object_group() == "<new_group group>"

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    used = Recorder()
    monkeypatch.setattr(torch.distributed, "all_gather_object", used("gather"))
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", used("broadcast"))
    monkeypatch.setattr(torch.distributed, "barrier", used("barrier"))
    ranks = Ranks(rank=0, world=2)
    ranks.gather([1]), ranks.broadcast({"labels": [0]}), ranks.barrier()
    assert [(n, kw.get("group")) for n, _, kw in used.calls] == [(n, "<new_group group>")
                                                               for n in ("gather", "broadcast", "barrier")]


def test_trainers_pass_the_configured_timeout(monkeypatch):
    """PolicyTrainer and PRMLearner (the two process-group inits) hand trainer.dist_timeout_min over."""
    import prm.update
    from prm.config import PRMConfig
    from prm.model import EnsemblePRM
    from rl.config import AlgoConfig, PolicyConfig
    from rl.policy import PolicyTrainer

    seen = []

    class Stop(Exception):
        pass

    def fake_init(timeout_min):
        seen.append(timeout_min)
        raise Stop

    monkeypatch.setattr(dist_mod, "init_distributed", fake_init)
    monkeypatch.setattr(prm.update, "init_distributed", fake_init)
    trainer = TrainerConfig(deepspeed=True, dist_timeout_min=75)
    with pytest.raises(Stop):
        PolicyTrainer(PolicyConfig(model="tiny-random-llama", dtype="fp32", train_mode="full", device="cpu"),
                      AlgoConfig(), trainer)
    with pytest.raises(Stop):
        prm.update.PRMLearner(EnsemblePRM.from_config(PRMConfig(backbone="tiny-random-llama", num_heads=2,
                                                                device="cpu")), trainer)
    assert seen == [75, 75]


def test_default_outlasts_a_judge_phase_and_zero_is_refused():
    assert TrainerConfig().dist_timeout_min >= 60
    with pytest.raises(ConfigError, match="trainer.dist_timeout_min must be >= 1"):
        validate({"dist_timeout_min": 0}, TrainerConfig)
