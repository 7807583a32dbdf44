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


def test_logistic_fit_recovers_known_coefficients():
    import numpy as np

    from prm.confidence import fit_logistic
    # two x values: the unpenalised fit is the two groups' log-odds, logit(3/4) = log 3 at x = 0 and
    # logit(1/4) = -log 3 at x = 1, so a = log 3 and b = -2 log 3
    a, b = fit_logistic([0, 0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 1, 0, 0, 0], ridge=0.0)
    assert (a, b) == pytest.approx((math.log(3), -2 * math.log(3)), abs=1e-9)
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 2.0, 20_000)
    y = rng.random(20_000) < 1 / (1 + np.exp(-(-1.0 + 1.5 * x)))
    assert fit_logistic(x, y) == pytest.approx((-1.0, 1.5), abs=0.08)
    a, b = fit_logistic([0.1, 0.5, 0.9], [1, 1, 1])     # one class: finite (the ridge), and says "right"
    assert math.isfinite(a) and math.isfinite(b) and 1 / (1 + math.exp(-(a + 0.5 * b))) > 0.99


def test_calibrated_confidence_fits_the_labelled_steps_and_maps_their_log():
    from prm.confidence import CalibratedConfidence
    from prm.model import LOGPROB_FLOOR
    c = CalibratedConfidence(1.0, 0.5)   # sigmoid(1 + 0.5 log p); p = 0 counts as log p = the floor
    assert c.transform([[1.0, math.exp(-2.0), 0.0]]) == [pytest.approx(
        [1 / (1 + math.exp(-1.0)), 0.5, 1 / (1 + math.exp(-(1.0 + 0.5 * LOGPROB_FLOOR)))])]
    # labelled steps: trajectory 1's steps 0, 1 right, step 2 wrong, step 3 (after the error) unlabelled;
    # trajectory 2's both right. log p = 0: 4 right of 4, so near 1 (step 3 counted wrong would make it 4/5);
    # log p = -2: the one wrong step, near 0
    fit = CalibratedConfidence.fit([[1.0, 1.0, math.exp(-2.0), 1.0], [1.0, 1.0]], [2, -1])
    high, low, _ = fit.transform([[1.0, math.exp(-2.0), math.exp(-1.0)]])[0]
    assert fit.slope > 0 and high > 0.9 and low < 0.1
