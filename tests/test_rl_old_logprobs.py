"""Old log-probs of a PPO update: a single optimizer step reads its own forward (PolicyTrainer.one_step, TRL's
rule for num_iterations == 1) instead of a separate no-grad pass; more steps need the pass."""
from types import SimpleNamespace

import pytest
import torch

from core.config import TrainerConfig
from core.distributed import Ranks
from rl.config import AlgoConfig, PolicyConfig
from rl.loop import OnlineLoop
from rl.policy import PolicyTrainer, Sample


def make_trainer(**algo) -> PolicyTrainer:
    torch.manual_seed(0)
    return PolicyTrainer(PolicyConfig(model="tiny-random-llama", dtype="fp32", train_mode="full", device="cpu"),
                         AlgoConfig(**{"mini_batch_size": 4, "micro_batch_size": 2, **algo}),
                         TrainerConfig(deepspeed=False))


def make_samples() -> list[Sample]:
    return [Sample([1, 2, 3], [4, 5, 9], torch.tensor([0.5, -0.5, 1.0])), Sample([1, 2], [6, 7, 8], torch.ones(3)),
            Sample([3, 1, 4, 1], [5], torch.tensor([-1.0])), Sample([2, 7], [1, 8, 2, 8], torch.full((4,), -0.3))]


def gradients(trainer: PolicyTrainer, samples: list[Sample], monkeypatch) -> list[torch.Tensor]:
    """The gradient of one update (the optimizer step is held back, so it is left on the parameters)."""
    monkeypatch.setattr(trainer.optimizer, "step", lambda *a, **k: None)
    trainer.update(samples, torch.Generator().manual_seed(1))
    return [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]


def test_one_step_gives_the_gradient_of_the_precomputed_old_policy(monkeypatch):
    """Both ways the ratio is 1: exactly with the step's own log-probs, up to the rounding of two fp32 forwards
    of the same weights (about 1e-6 relative) with a separate pass. So the gradients agree far inside 1e-4 of
    the largest entry, and differ from a gradient of other advantages by far more."""
    precomputed, own = make_samples(), make_samples()
    reference = make_trainer()
    assert reference.one_step(len(precomputed))
    for s, logp in zip(precomputed, reference.logprobs(precomputed)):
        s.old_logprobs = logp
    expected = gradients(reference, precomputed, monkeypatch)
    got = gradients(make_trainer(), own, monkeypatch)
    scale = max(g.abs().max() for g in expected)
    assert scale > 0
    assert all(torch.allclose(g, e, rtol=0, atol=1e-4 * scale) for g, e in zip(got, expected))
    flipped = make_samples()
    for s in flipped:
        s.advantages = -s.advantages
    other = gradients(make_trainer(), flipped, monkeypatch)
    assert max((g - e).abs().max() for g, e in zip(other, expected)) > 0.1 * scale


def test_more_than_one_step_without_old_logprobs_is_refused():
    trainer = make_trainer(ppo_epochs=2)
    assert not trainer.one_step(4)
    with pytest.raises(ValueError, match="2 optimizer steps on samples without old_logprobs"):
        trainer.update(make_samples())
    assert not make_trainer(mini_batch_size=2).one_step(4)


@pytest.mark.parametrize("algo, passes", [({}, 0), ({"ppo_epochs": 2}, 1), ({"mini_batch_size": 2}, 1)])
def test_the_loop_runs_the_no_grad_pass_only_for_more_than_one_step(algo, passes, monkeypatch):
    trainer = make_trainer(**algo)
    calls = []
    logprobs = trainer.logprobs
    monkeypatch.setattr(trainer, "logprobs", lambda *a, **k: calls.append(1) or logprobs(*a, **k))
    loop = SimpleNamespace(ranks=Ranks(), policy=trainer,
                           cfg=SimpleNamespace(algo=trainer.algo, trainer=SimpleNamespace(seed=0)))
    metrics = OnlineLoop.update_policy(loop, make_samples(), 0)
    assert len(calls) == passes
    assert metrics["optimizer_steps"] == (1 if not algo else 2)
