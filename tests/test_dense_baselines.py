"""Dense-reward baselines: PRIME's implicit process reward (prm/implicit.py) and the outcome reward model (the
ensemble trained on the judged trajectories' final-answer verdicts, PRMLearner.update(outcomes=...))."""
import math
from types import SimpleNamespace

import pytest
import torch

from core.config import TrainerConfig
from core.models import load_model
from prm.config import PRMConfig
from prm.implicit import ImplicitPRM, completion_logprobs
from prm.model import EnsemblePRM
from prm.update import PRMLearner
from tasks.problems import Trajectory


class Bigram(torch.nn.Module):
    """logits of the next token = table[current token]: log-probabilities one can write down."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def test_implicit_reward_is_beta_times_the_policy_to_reference_log_ratio():
    # pi_phi(. | 0) = (3/4, 1/4), pi_phi(. | 1) = (1/2, 1/2); pi_ref uniform everywhere
    prm = ImplicitPRM(Bigram([[math.log(3), 0.0], [0.0, 0.0]]), Bigram([[0.0, 0.0], [0.0, 0.0]]), pad_id=1, beta=0.1)
    rewards = prm.token_rewards([[0], [1, 1]], [[0, 1], [0]])
    # sample 1: y_0 = 0 after 0 -> log(3/4 / 1/2); y_1 = 1 after 0 -> log(1/4 / 1/2). Sample 2: after 1 -> log 1
    assert torch.allclose(rewards[0], torch.tensor([0.1 * math.log(1.5), 0.1 * math.log(0.5)]), atol=1e-6)
    assert torch.allclose(rewards[1], torch.tensor([0.0]), atol=1e-6)


def test_implicit_reward_of_a_padded_batch_matches_each_sample_alone():
    model, tok = load_model("tiny-random-llama", "fp32", seed=0)
    reference, _ = load_model("tiny-random-llama", "fp32", seed=1)
    prompts, completions = [[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 14]]
    batched = completion_logprobs(model, prompts, completions, tok.pad_token_id)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        logits = model(input_ids=torch.tensor([p + c])).logits[0].float().log_softmax(-1)
        alone = torch.stack([logits[len(p) - 1 + t, c[t]] for t in range(len(c))])
        assert torch.allclose(batched[b], alone, atol=1e-5)
    prm = ImplicitPRM(model, reference, tok.pad_token_id, beta=0.05)
    ref = completion_logprobs(reference, prompts, completions, tok.pad_token_id)
    for got, a, r in zip(prm.token_rewards(prompts, completions), batched, ref):
        assert torch.allclose(got, 0.05 * (a - r).detach(), atol=1e-6)


def test_implicit_prm_learns_outcomes_with_the_cross_entropy(tmp_path):
    """Sequences labelled 1 end with a positive implicit outcome reward sum_t r(y_t), those labelled 0 negative;
    a checkpoint restores the learned state exactly."""
    start = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    prm = ImplicitPRM(Bigram(start), Bigram(start), pad_id=2, beta=0.5, lr=0.05)
    prompts, completions, outcomes = [[2], [2], [2], [2]], [[0, 0], [0], [1, 1], [1]], [1.0, 1.0, 0.0, 0.0]
    first = prm.update(prompts, completions, outcomes)
    for _ in range(30):
        last = prm.update(prompts, completions, outcomes)
    assert last["loss"] < first["loss"] and last["acc_before"] == 1.0
    sums = [float(r.sum()) for r in prm.token_rewards(prompts, completions)]
    assert sums[0] > 0 and sums[1] > 0 and sums[2] < 0 and sums[3] < 0
    prm.save(tmp_path / "implicit")
    again = ImplicitPRM(Bigram(start), Bigram(start), pad_id=2, beta=0.5, lr=0.05)
    again.load(tmp_path / "implicit")
    assert torch.equal(again.model.table, prm.model.table)
    assert prm.update(prompts, completions, outcomes) == pytest.approx(again.update(prompts, completions, outcomes))


def test_orm_labels_every_step_with_the_final_answer_verdict():
    """An ORM update labels every scored step of a judged trajectory with its outcome (a PRM update labels the
    steps up to the first error only), and on a toy set it learns to rank passed solutions above failed ones."""
    learner = PRMLearner(EnsemblePRM(PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=4,
                                               head_lr=3e-2, batch_size=8)), TrainerConfig(deepspeed=False))
    passed = [Trajectory(f"What is {i} + 1?", [f"{i} + 1 = {i + 1}", f"The answer is {i + 1}."], -1) for i in range(4)]
    failed = [Trajectory(f"What is {i} * 9?", [f"{i} * 9 = 0", "The answer is 0."], 0) for i in range(4)]
    toy = passed + failed
    outcomes = [True] * 4 + [False] * 4
    learner.update(toy, [True] * 8, outcomes=outcomes)
    assert learner.last_labels == [-1] * 4 + [0] * 4
    first = learner.update(toy, [True] * 8, outcomes=outcomes)
    for _ in range(40):
        last = learner.update(toy, [True] * 8, outcomes=outcomes)
    assert last["bce"] < first["bce"]
    scores = learner.score([t.question for t in toy], [t.steps for t in toy])
    assert min(min(s.mean) for s in scores[:4]) > max(max(s.mean) for s in scores[4:])   # every step, both sides
