"""The policy's own confidence (prm.confidence) as rl.search's step scorer: it selects what hand-computed
log-probs say it should, and its passes are charged to the equal-compute accounting as policy passes."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tasks.chain.policy import ChainModelSpec, build_tokenizer, prompt_text
from prm.confidence import PolicyConfidence
from rl.search_methods import Continuation, SearchProblem, SearchSettings, beam_search, best_of_n
from rl.search_select import SELECTORS, ScoreSpec
from tests.test_prm_confidence import Bigram, _hand_logp
from tests.test_search_command import _cfg

Q = "What is (1 + 1) + 2?"
SAMPLES = ["1 + 1 = 2\n\n2 + 2 = 4\n\nThe answer is 4.", "1 + 1 = 3\n\n3 + 2 = 5\n\nThe answer is 5.",
           "1 + 1 = 2\n\n2 + 2 = 6\n\nThe answer is 6.", "1 + 1 = 1\n\n1 + 2 = 3\n\nThe answer is 3."]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(ChainModelSpec())


def _table(v: int) -> list[list[float]]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(v, v, generator=g) * 3).tolist()   # continuous: no two steps tie


def hand_confidence(tok, text: str, reduce: str = "min") -> list[float]:
    """exp(min / mean token log-prob) of each step under the bigram table, by the module doc's definition."""
    table = _table(len(tok))
    prompt = tok(prompt_text(tok, Q), add_special_tokens=False).input_ids
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = prompt + enc.input_ids
    starts = [0] + [i + 2 for i in range(len(text)) if text.startswith("\n\n", i)]
    ends = [i for i in range(len(text)) if text.startswith("\n\n", i)] + [len(text)]
    per_step = [[] for _ in starts]
    for t, (a, b) in enumerate(enc.offset_mapping):
        k = next((k for k, (s, e) in enumerate(zip(starts, ends)) if a < e and b > s), None)
        if k is not None:
            per_step[k].append(_hand_logp(table, ids[len(prompt) + t - 1], ids[len(prompt) + t]))
    return [math.exp(min(v) if reduce == "min" else sum(v) / len(v)) for v in per_step]


class Samples:
    def __init__(self, texts):
        self.texts = texts

    def __call__(self, contexts, n, one_step, greedy=False):
        if one_step:   # beam: child k of context i is the first step of sample i (ends at the blank line)
            return [[Continuation(self.texts[i].split("\n\n")[0], 5, step_end=True) for _ in range(n)]
                    for i in range(len(contexts))]
        return [[Continuation(self.texts[i], 10) for i in range(n)] for _ in contexts]


def test_best_of_n_under_confidence_picks_the_hand_computed_likeliest(tok):
    scorer = PolicyConfidence(Bigram(len(tok), _table), tok, "min", prompt=lambda q: prompt_text(tok, q))
    settings = SearchSettings(n=4, spec=ScoreSpec("last"), scorer_passes="policy_passes")
    out = best_of_n([SearchProblem(Q, prompt_text(tok, Q), "4")], Samples(SAMPLES), scorer.score, settings)[0]
    hand = [hand_confidence(tok, t) for t in SAMPLES]
    assert [s.mean for s in out.solutions] == [pytest.approx(h, rel=1e-5) for h in hand]
    solution_scores = [h[-1] for h in hand]
    assert len(set(solution_scores)) == len(solution_scores)   # no tie: the choice is the table's
    assert SELECTORS["vanilla"](out.solutions, settings.spec) == solution_scores.index(max(solution_scores))
    assert out.cost.policy_passes == 4 and out.cost.prm_passes == 0 and out.cost.scored_steps == 12


def test_beam_under_confidence_keeps_the_hand_computed_likeliest_step(tok):
    scorer = PolicyConfidence(Bigram(len(tok), _table), tok, "mean", prompt=lambda q: prompt_text(tok, q))
    firsts = ["1 + 1 = 2", "2 * 3 = 6", "9 - 4 = 5"]
    texts = [f"{f}\n\nThe answer is 0." for f in firsts]
    settings = SearchSettings(n=3, beam_width=3, max_iterations=2, spec=ScoreSpec("last"),
                              scorer_passes="policy_passes")
    out = beam_search([SearchProblem(Q, prompt_text(tok, Q), "4")], Samples(texts), scorer.score, settings)[0]
    hand = [hand_confidence(tok, f, "mean")[0] for f in firsts]
    assert len(set(hand)) == 3
    best = firsts[hand.index(max(hand))]
    assert {s.steps[0] for s in out.solutions} == {best}   # n / M = 1 survivor, refilled to n
    assert out.cost.policy_passes > 0 and out.cost.prm_passes == 0


def test_search_command_with_the_confidence_scorer(tmp_path):
    from rl.search import search

    search(_cfg(tmp_path, "scorer.source=confidence_min", "scorer.aggregate=min",
                "scorer.betas=[0.0]"))
    for name in ("best_of_n-n4-seed0.jsonl", "beam-n4-beta0-seed0.jsonl", "dvts-n4-beta0-seed0.jsonl"):
        recs = [json.loads(line) for line in (tmp_path / "records" / name).open()]
        assert all(r["scorer"] == "confidence_min" for r in recs)
        assert all(r["cost"]["policy_passes"] > 0 and r["cost"]["prm_passes"] == 0 for r in recs)
        assert all(0.0 < v <= 1.0 for r in recs for s in r["solutions"] for v in s["mean"])
    assert "policy scoring passes / problem" in (tmp_path / "summary.md").read_text()
    with pytest.raises(Exception, match="source"):
        _cfg(tmp_path, "scorer.source=likelihood")
