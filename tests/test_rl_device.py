"""Device placement and launcher plumbing of rl.online (CPU-only checks; the GPU run is bench/gpu_check.sh)."""
import os

import pytest
import torch

from core.config import ConfigError, TrainerConfig, resolve_device
from rl.config import AlgoConfig, OnlineConfig, PolicyConfig
from core.distributed import Ranks, accept_local_rank_argument, minibatch_plan
from rl.policy import PolicyTrainer, Sample


@pytest.fixture(scope="module")
def trainer():
    return PolicyTrainer(PolicyConfig(model="tiny-random-llama", dtype="fp32", train_mode="full", device="cpu"),
                         AlgoConfig(mini_batch_size=4, micro_batch_size=2), TrainerConfig(deepspeed=False))


def test_every_tensor_the_trainer_builds_lands_on_its_device(trainer, monkeypatch):
    """The forward sees ids, mask and positions on trainer.device; the loss mixes them with advantages and
    old log-probs (built by other code, on the CPU) without a device error."""
    seen = []
    forward = trainer.model.forward

    def spy(*args, **kwargs):
        seen.extend((k, v.device) for k, v in kwargs.items() if isinstance(v, torch.Tensor))
        return forward(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", spy)
    samples = [Sample([1, 2, 3], [4, 5], torch.tensor([0.5, -0.5])), Sample([1, 2], [6, 7, 8], torch.ones(3))]
    for s, logp in zip(samples, trainer.logprobs(samples)):
        assert logp.device == trainer.device
        s.old_logprobs = logp.cpu()
    metrics = trainer.update(samples)
    assert metrics["optimizer_steps"] == 1
    assert {k for k, _ in seen} >= {"input_ids", "attention_mask", "position_ids"}
    assert all(device == trainer.device for _, device in seen)
    assert trainer.device == next(trainer.model.parameters()).device


def test_auto_device_is_this_ranks_gpu_under_a_launcher(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert resolve_device("auto") == "cuda:3" == resolve_device("cuda")
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"


def test_policy_device_is_validated_and_the_dead_trainer_device_is_gone():
    with pytest.raises(ConfigError, match="policy.device must be"):
        PolicyConfig(device="gpu0")
    assert "device" not in TrainerConfig.__dataclass_fields__
    assert OnlineConfig().policy.device == "auto"


@pytest.mark.parametrize("argv", [["-m", "--local_rank=2", "rounds=1"], ["-m", "--local_rank", "2", "rounds=1"]])
def test_deepspeed_launchers_local_rank_argument_becomes_the_env_var(monkeypatch, argv):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    accept_local_rank_argument(argv)
    assert argv == ["-m", "rounds=1"] and os.environ["LOCAL_RANK"] == "2"


def test_shards_are_contiguous_and_must_divide():
    assert [Ranks(r, 2).shard(list(range(6))) for r in (0, 1)] == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="not a multiple of the 4 ranks"):
        Ranks(0, 4).shard(list(range(6)))


def test_minibatch_plan_is_one_ranks_plan_split_by_owner():
    """Hand-checked: 5 samples (rank 0 has 3, rank 1 has 2), minibatches of 2 from the permutation
    the generator draws; micro-batches of 1, so micro_steps = the largest per-rank share."""
    lengths = [[3, 1, 4], [1, 5]]
    order = torch.randperm(5, generator=torch.Generator().manual_seed(7)).tolist()
    owners = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    plan = minibatch_plan(lengths, 2, 1, 1, torch.Generator().manual_seed(7))
    assert len(plan) == 3
    for k, mini in enumerate(plan):
        members = [owners[j] for j in order[2 * k:2 * k + 2]]
        assert mini["per_rank"] == [[i for r, i in members if r == 0], [i for r, i in members if r == 1]]
        assert mini["tokens"] == sum(lengths[r][i] for r, i in members)
        assert mini["micro_steps"] == max(len(p) for p in mini["per_rank"])


def test_forward_logprobs_asks_for_the_device_of_every_tensor_it_creates(trainer, monkeypatch):
    """On a CPU-only machine 'cpu' is the only device, so a missing device= would pass the check above:
    here every factory call of _forward_logprobs must name trainer.device explicitly."""
    calls = []
    for name in ("full", "zeros", "tensor"):
        original = getattr(torch, name)

        def factory(*args, _original=original, _name=name, **kwargs):
            calls.append((_name, kwargs.get("device")))
            return _original(*args, **kwargs)
        monkeypatch.setattr(torch, name, factory)
    trainer._forward_logprobs(trainer.model, [Sample([1, 2, 3], [4, 5]), Sample([1], [6, 7, 8])])
    assert {n for n, _ in calls} == {"full", "zeros", "tensor"}
    assert all(device == trainer.device for _, device in calls), calls
