"""Chunked completion log-probs (rl.policy.completion_logprobs) equal the former whole-tensor computation,
values and gradients, bit for bit: the same row-wise operations on the same rows."""
from __future__ import annotations

import pytest
import torch

import rl.policy
from rl.policy import completion_logprobs


def whole(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """The former path: one full-vocabulary fp32 copy of every position."""
    return (logits.float() / temperature).log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_equals_whole_values_and_gradients(monkeypatch, dtype):
    vocab = 1000
    monkeypatch.setattr(rl.policy, "LOGPROB_CHUNK_BYTES", 5 * 4 * vocab)   # 5 positions a chunk: 8 chunks a row
    gen = torch.Generator().manual_seed(0)
    base = (torch.randn(3, 37, vocab, generator=gen) * 4).to(dtype)
    targets = torch.randint(0, vocab, (3, 37), generator=gen)
    weights = torch.randn(3, 37, generator=gen)
    results = []
    for fn in (whole, completion_logprobs):
        logits = base.clone().requires_grad_(True)
        logp = fn(logits, targets, 0.7)
        (logp * weights).sum().backward()
        results.append((logp.detach(), logits.grad))
    (want, want_grad), (got, got_grad) = results
    assert got.dtype == torch.float32 and got.shape == (3, 37)
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
    with torch.no_grad():   # the old/reference log-prob passes: no checkpointing, same values
        assert torch.equal(completion_logprobs(base, targets, 0.7), want)


def test_no_full_vocabulary_fp32_copy(monkeypatch):
    """Every fp32 temporary is one chunk: the largest float32 tensor the chunks make is rows x vocab."""
    vocab, rows = 512, 4
    monkeypatch.setattr(rl.policy, "LOGPROB_CHUNK_BYTES", rows * 4 * vocab)
    seen = []
    real = rl.policy._chunk_logprobs

    def spy(logits, targets, temperature):
        seen.append(logits.numel())
        return real(logits, targets, temperature)

    monkeypatch.setattr(rl.policy, "_chunk_logprobs", spy)
    logits = torch.randn(2, 10, vocab, dtype=torch.bfloat16)
    completion_logprobs(logits, torch.zeros(2, 10, dtype=torch.long), 1.0)
    assert max(seen) == rows * vocab and sum(seen) == logits.numel()
