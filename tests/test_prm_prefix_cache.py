"""PrefixCachedScorer: step-wise scoring that reuses the parents' keys/values equals full passes."""
import pytest
import torch

from prm.config import PRMConfig
from prm.model import EnsemblePRM
from prm.prefix_cache import PrefixCachedScorer

QUESTIONS = ["What is 2+2?", "A train leaves at 3 pm and travels 60 km/h for 2 hours; how far?", "q"]
STEPS = ["First add the numbers", "2 + 2 = 4", "So the answer is 4.", "Distance is speed times time",
         "60 * 2 = 120 km, which is a long way for a short question", "x", "The answer is \\boxed{120}"]


@pytest.fixture(scope="module")
def prm():
    torch.manual_seed(0)
    return EnsemblePRM(PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=4))


def search_rounds(rounds: int = 4, width: int = 3):
    """Beam-like calls: each round's sequences extend (some of) the last round's by one step, plus a
    fresh sequence per round whose parent was never scored (a full pass in the same batch)."""
    gen = torch.Generator().manual_seed(1)
    pick = lambda: STEPS[int(torch.randint(len(STEPS), (1,), generator=gen))]   # noqa: E731
    frontier = [(q, []) for q in QUESTIONS]
    for r in range(rounds):
        calls = [(q, s + [pick()]) for q, s in frontier for _ in range(width)]
        calls.append((QUESTIONS[r % 3], [pick() for _ in range(r + 1)] + ["never scored before"]))
        yield [q for q, _ in calls], [s for _, s in calls]
        frontier = calls[::2]                                 # the survivors: every other sequence


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert len(g.mean) == len(w.mean)
        assert torch.allclose(torch.tensor(g.mean), torch.tensor(w.mean), atol=1e-5)
        assert torch.allclose(torch.tensor(g.std), torch.tensor(w.std), atol=1e-5)


@pytest.mark.parametrize("batch_size", [2, 5, 64])
def test_scores_equal_full_passes_and_prefixes_are_reused(prm, batch_size):
    scorer = PrefixCachedScorer(prm, batch_size=batch_size)
    full_tokens = 0
    for r, (questions, steps) in enumerate(search_rounds()):
        before = scorer.tokens_reused
        assert_same(scorer(questions, steps), prm.score(questions, steps))
        full_tokens += sum(len(prm.encode(q, s)[0]) for q, s in zip(questions, steps))
        assert (scorer.tokens_reused > before) == (r > 0)     # round 0 has no scored parents
    assert scorer.tokens_run + scorer.tokens_reused == full_tokens
    assert scorer.tokens_run < 0.6 * full_tokens


def test_no_budget_means_no_reuse_and_the_same_scores(prm):
    scorer = PrefixCachedScorer(prm, batch_size=4, max_bytes=0)
    for questions, steps in search_rounds(rounds=3):
        assert_same(scorer(questions, steps), prm.score(questions, steps))
    assert scorer.tokens_reused == 0


def test_entries_live_one_call_and_empty_solutions_score_empty(prm):
    scorer = PrefixCachedScorer(prm, batch_size=4)
    scorer(["q"], [["a"]])
    scorer(["q"], [["b"]])                                   # "a" is gone after this call
    before = scorer.tokens_reused
    assert_same(scorer(["q", "q"], [["a", "c"], []]), prm.score(["q", "q"], [["a", "c"], []]))
    assert scorer.tokens_reused == before
    prm.train()
    scorer(["q"], [["a"]])
    assert prm.training                                      # the caller's mode is restored
    prm.eval()
