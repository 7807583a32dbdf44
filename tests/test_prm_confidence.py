"""prm.confidence: per-step min / mean token log-probs, checked against a hand-computed bigram model."""
import math
from types import SimpleNamespace

import pytest
import torch

from tasks.chain.policy import ChainModelSpec, build_tokenizer, prompt_text
from prm.confidence import PolicyConfidence


def _table(v: int) -> list[list[float]]:
    return [[float((i * 7 + j * 3) % 5) for j in range(v)] for i in range(v)]


class Bigram(torch.nn.Module):
    """logits at position t depend only on token t: table[token]."""

    def __init__(self, v, table=_table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table(v)))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(ChainModelSpec())


def _hand_logp(table, prev, nxt):
    row = table[prev]
    return row[nxt] - math.log(sum(math.exp(x) for x in row))


def test_confidence_matches_hand_computed_logprobs(tok):
    q, steps = "What is (1 + 1) + 2?", ["1 + 1 = 2", "2 + 2 = 4", "The answer is 4."]
    prompt = tok(prompt_text(tok, q), add_special_tokens=False).input_ids
    completion = tok("1 + 1 = 2\n\n2 + 2 = 4\n\nThe answer is 4.", add_special_tokens=False).input_ids
    pieces = tok.convert_ids_to_tokens(completion)
    # every digit its own token; the blank line one token before a digit, two before a word (GPT-2's
    # whitespace rule): steps 0 and 1 are 7 tokens each, separators belong to no step
    assert pieces[:8] == ["1", "Ġ+", "Ġ", "1", "Ġ=", "Ġ", "2", "ĊĊ"] and pieces[15:18] == ["Ċ", "Ċ", "The"]
    table = _table(len(tok))
    ids = prompt + completion
    logp = [_hand_logp(table, ids[len(prompt) + i - 1], ids[len(prompt) + i]) for i in range(len(completion))]
    by_step = [logp[0:7], logp[8:15], logp[17:]]
    model = Bigram(len(tok))
    got_min = PolicyConfidence(model, tok, "min")([q], [steps])[0]
    got_mean = PolicyConfidence(model, tok, "mean", batch_size=1)([q], [steps])[0]
    assert got_min == pytest.approx([math.exp(min(s)) for s in by_step], rel=1e-5)
    assert got_mean == pytest.approx([math.exp(sum(s) / len(s)) for s in by_step], rel=1e-5)


def test_confidence_batches_with_padding_like_one_by_one(tok):
    model = Bigram(len(tok))
    qs = ["What is 1 + 2?", "What is ((3 * 3) - 1) + 4?"]
    ss = [["1 + 2 = 3", "The answer is 3."], ["3 * 3 = 9", "9 - 1 = 8", "8 + 4 = 12", "The answer is 12."]]
    batched = PolicyConfidence(model, tok, "min", batch_size=2)(qs, ss)
    single = [PolicyConfidence(model, tok, "min", batch_size=1)([q], [s])[0] for q, s in zip(qs, ss)]
    assert [len(s) for s in batched] == [2, 4]
    for b, s in zip(batched, single):
        assert b == pytest.approx(s)
    scores = PolicyConfidence(model, tok).score(qs, ss)
    assert scores[1].mean == pytest.approx(batched[1]) and scores[1].std == [0.0] * 4
    with pytest.raises(ValueError, match="reduce"):
        PolicyConfidence(model, tok, "max")
