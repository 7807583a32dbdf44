"""HF rollout backend: its own sampler draws from the right distribution; recorded log-probs stay exact."""
import math

import pytest
import torch

from core.models import load_model
from rl.rollout import HFRollout, InverseCDFSampler


def _draw(logits: list[float], rows: int, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    scores = torch.tensor([logits] * rows)
    out = InverseCDFSampler(temperature, top_p)(torch.zeros(rows, 1, dtype=torch.long), scores)
    assert torch.all(torch.isfinite(out).sum(-1) == 1)        # exactly one token left for greedy to take
    return out.argmax(-1)


def _freq(picks: torch.Tensor, vocab: int) -> list[float]:
    return (torch.bincount(picks, minlength=vocab).float() / len(picks)).tolist()


def test_sampler_matches_softmax_with_temperature():
    torch.manual_seed(0)
    logits = [2.0, 1.0, 0.0, -1.0, float("-inf")]
    want = torch.tensor(logits).div(0.7).softmax(-1).tolist()
    got = _freq(_draw(logits, 40_000, temperature=0.7), 5)
    for g, w in zip(got, want):   # 40k draws: binomial std <= 0.0025
        assert abs(g - w) < 0.01
    assert got[4] == 0.0           # a -inf token is never drawn


def test_sampler_top_p_keeps_the_nucleus_and_renormalises():
    torch.manual_seed(1)
    logits = [math.log(p) for p in (0.1, 0.5, 0.1, 0.3)]   # nucleus for 0.6: tokens 1 and 3
    got = _freq(_draw(logits, 40_000, top_p=0.6), 4)
    assert got[0] == got[2] == 0.0
    assert abs(got[1] - 0.5 / 0.8) < 0.01 and abs(got[3] - 0.3 / 0.8) < 0.01
    only = _freq(_draw(logits, 1000, top_p=0.4), 4)          # the top token alone reaches 0.4
    assert only[1] == 1.0


@pytest.fixture(scope="module")
def rollout():
    model, tok = load_model("tiny-random-llama", "fp32")
    return HFRollout(model=model, tokenizer=tok, batch_size=8)


def test_sampling_is_seeded_and_logprobs_are_the_models(rollout):
    prompts = ["What is 2 + 3?", "What is 7 - 4?"]
    torch.manual_seed(3)
    a = rollout.generate(prompts, 3, 12, temperature=0.9)
    torch.manual_seed(3)
    b = rollout.generate(prompts, 3, 12, temperature=0.9)
    assert [c.token_ids for g in a for c in g] == [c.token_ids for g in b for c in g]
    assert len({tuple(c.token_ids) for c in a[0]}) > 1       # samples differ within a group
    for prompt, group in zip(prompts, a):
        for c in group:   # raw log p (before temperature) of each sampled token, as the engine computes it
            engine = rollout.engine_logprobs(prompt, c.token_ids)
            assert max(abs(x - y) for x, y in zip(c.logprobs, engine)) < 1e-4


def test_greedy_takes_the_argmax(rollout):
    out = rollout.generate(["What is 2 + 3?"], 2, 8, temperature=0.0)[0]
    assert out[0].token_ids == out[1].token_ids
    assert all(lp == pytest.approx(max_lp, abs=1e-5) for lp, max_lp in zip(
        out[0].logprobs, _max_logprobs(rollout, "What is 2 + 3?", out[0].token_ids)))


def _max_logprobs(rollout, prompt: str, ids: list[int]) -> list[float]:
    tok, model = rollout.tokenizer, rollout.model
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([p + ids])).logits[0, len(p) - 1:-1].float()
    return logits.log_softmax(-1).max(-1).values.tolist()


def test_the_static_kv_cache_generates_what_the_dynamic_one_does(rollout, monkeypatch):
    """rollout.hf_kv_cache changes where generate keeps keys and values, not what it computes: the same seeded
    samples (the logits differ only by fp32 rounding of attention over a longer, masked cache, far below a
    sampled token's margin) and the same log-probs; and it reaches generate."""
    static = HFRollout(model=rollout.model, tokenizer=rollout.tokenizer, batch_size=8, hf_kv_cache="static")
    seen = []
    generate = rollout.model.generate
    monkeypatch.setattr(rollout.model, "generate", lambda **kw: seen.append(kw.get("cache_implementation"))
                        or generate(**kw))
    prompts = ["What is 2 + 3?", "What is 17 - 4 + 8?"]
    for temperature in (0.9, 0.0):
        a = rollout.generate(prompts, 3, 16, temperature=temperature, seeds=[5, 6])
        b = static.generate(prompts, 3, 16, temperature=temperature, seeds=[5, 6])
        assert [c.token_ids for g in a for c in g] == [c.token_ids for g in b for c in g]
        assert max(abs(x - y) for g, h in zip(a, b) for c, d in zip(g, h) for x, y in zip(c.logprobs, d.logprobs)) < 1e-5
    assert seen == [None, "static", None, "static"]


def test_a_static_kv_cache_is_refused_for_the_vllm_backend():
    from core.config import ConfigError
    from rl.config import RolloutConfig
    assert RolloutConfig(hf_kv_cache="static").hf_kv_cache == "static"
    with pytest.raises(ConfigError, match="rollout.hf_kv_cache=static sets the hf backend's KV cache"):
        RolloutConfig(backend="vllm", hf_kv_cache="static")
