"""prm.step_features=hidden_policy_logprob with a trained backbone: the frozen initial backbone's log-prob
columns are computed once per item (prm.logprob_columns.ReferenceColumns) and read back by every later
batch. Pinned: the frozen backbone runs once per distinct item (call counting), the stored columns equal a
recomputation on the batch that reads them, and training or a whole online run with the store gives what
recomputing the columns on every batch (a store that keeps nothing) gives."""
from dataclasses import replace

import pytest
import torch

from core.config import TrainerConfig
from prm import batching
from prm.config import PRMConfig, ReplayConfig
from prm.logprob_columns import ReferenceColumns, reference_step_columns
from prm.model import EnsemblePRM
from prm.update import PRMLearner
from tasks.problems import Trajectory

ITEMS = [Trajectory(f"What is {i} + {3 * i}?", [f"{i} + {3 * i} = {4 * i + (i % 3 == 0)}", "so " * (i % 5 + 1),
                                                 f"The answer is {4 * i}."], first_error=i % 4 - 1) for i in range(12)]
# fp32 reassociation: the frozen backbone runs the same ops on the same tokens in another batch, where only
# the padded length (the order of the attention and matmul sums) differs: a few ulps of each column's size
ULPS = 16 * torch.finfo(torch.float32).eps


def make(capacity: int | None = None, **kw) -> EnsemblePRM:
    prm = EnsemblePRM(PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=4, train_mode="full",
                                step_features="hidden_policy_logprob", head_lr=1e-2, lr=1e-3, batch_size=4, **kw))
    if capacity is not None:
        prm.reference_columns = ReferenceColumns(capacity)
    return prm


class Calls:
    """Forward calls of a module and the real (unpadded) token positions they ran."""

    def __init__(self, module):
        self.calls = self.positions = 0
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls += 1
        mask = kwargs.get("attention_mask")
        self.positions += int(kwargs["input_ids"].numel() if mask is None else mask.sum())


def batches(rounds: int = 6, size: int = 6) -> list[list[Trajectory]]:
    """Replay-like batches: each round's mix of items shifts, so every item sits in batches of other
    compositions (other padded lengths) than the one it was first scored in."""
    return [[ITEMS[(k * 5 + j) % len(ITEMS)] for j in range(size)] for k in range(rounds)]


def test_the_frozen_backbone_runs_once_per_item_however_often_it_is_scored_or_trained_on():
    prm = make()
    learner = PRMLearner(prm, TrainerConfig(deepspeed=False))
    reference, body = Calls(prm._reference[0].base_model), Calls(prm.body)
    scored = ITEMS[:8]
    first = learner.score([t.question for t in scored], [t.steps for t in scored])
    for batch in batches():                      # items 8-11 are new to the store in these batches
        learner.update(batch, [True] * len(batch))
    again = learner.score([t.question for t in ITEMS], [t.steps for t in ITEMS])
    lengths = [len(prm.encode(t.question, t.steps)[0]) for t in ITEMS]
    assert reference.positions == sum(lengths)   # every item once: scoring twice and 6 updates read the store
    assert len(prm.reference_columns) == len(ITEMS)
    assert body.positions > 2 * sum(lengths)     # the trained body, by contrast, runs on every batch
    # score's compute accounting follows: both backbones the first time, the trained body alone after
    assert [s.forward_tokens for s in first] == [2 * n for n in lengths[:8]]
    assert [s.forward_tokens for s in again] == lengths


def test_duplicates_in_one_batch_run_once():
    prm = make()
    reference = Calls(prm._reference[0].base_model)
    item = prm.encode(ITEMS[0].question, ITEMS[0].steps)
    columns, ran = prm.policy_columns([item, item, item], [prm.prompt_length(ITEMS[0].question)] * 3)
    assert ran == [True, False, False] and reference.positions == len(item[0])
    assert all(torch.equal(c, columns[0]) for c in columns)


@pytest.mark.parametrize("layout", ["padded", "bucketed", "packed"])
def test_stored_columns_equal_a_recomputation_on_the_batch_that_reads_them(layout):
    prm = make()
    qs, ss = [t.question for t in ITEMS], [t.steps for t in ITEMS]
    prm.score(qs[::-1], ss[::-1])                # stored from other batches (reversed, 4 at a time, padded)
    encoded = [prm.encode(q, s) for q, s in zip(qs, ss)]
    batch = prm.collate(encoded, layout=layout, questions=qs)
    plain = batching.build(encoded, prm.tokenizer.pad_token_id, layout, prm.cfg.pack_tokens,
                           firsts=[prm.prompt_length(q) for q in qs])
    recomputed = reference_step_columns(prm._reference[0], plain)
    stored = torch.cat([part.columns for part in batch.parts])[batch.order] if batch.parts else batch.columns
    assert stored.shape == recomputed.shape == (sum(len(s) for s in ss), 2)
    assert torch.allclose(stored, recomputed, rtol=0, atol=ULPS * float(recomputed.abs().max().clamp_min(1)))


def test_training_with_stored_columns_gives_what_recomputing_them_gives():
    """Same seed, same batches: a store that keeps nothing recomputes the columns on every batch (each
    batch's own composition); the default store reads the first computation back. Weights and scores
    agree to the columns' few ulps carried through six AdamW steps (1e-5 relative)."""
    out = []
    for capacity in (0, None):
        learner = PRMLearner(make(capacity), TrainerConfig(deepspeed=False))
        learner.score([t.question for t in ITEMS], [t.steps for t in ITEMS])
        for batch in batches():
            learner.update(batch, [True] * len(batch))
        scores = learner.score([t.question for t in ITEMS], [t.steps for t in ITEMS])
        out.append((torch.tensor([x for s in scores for x in s.mean]), learner.trainable_state()))
    (scores_a, weights_a), (scores_b, weights_b) = out
    assert torch.allclose(scores_a, scores_b, rtol=1e-5, atol=1e-6)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.allclose(weights_a[name], weights_b[name], rtol=1e-5, atol=1e-6), name


def test_the_online_loop_with_the_store_matches_recomputing_the_columns(tmp_path, monkeypatch):
    """The chain of a real run (score -> judge -> replay updates -> held-out quality, 2 rounds): every
    logged metric as without the store."""
    import prm.model
    from rl.online import run
    from tests.test_rl_loop import assert_same
    from tests.test_rl_replay_loop import replay_config

    def cfg(out):
        c = replay_config(out, rounds=2)
        return replace(c, prm=replace(c.prm, train_mode="full", step_features="hidden_policy_logprob", lr=1e-3),
                       replay=ReplayConfig(enabled=True, steps=3, batch_size=4, new_fraction=0.5, heldout_size=6))
    stored = run(cfg(tmp_path / "a"))
    monkeypatch.setattr(prm.model, "ReferenceColumns", lambda: ReferenceColumns(0))
    recomputed = run(cfg(tmp_path / "b"))
    assert len(stored) == len(recomputed) == 2 and "prm/heldout_auroc" in stored[-1]
    for a, b in zip(stored, recomputed):
        assert_same(a, b)
