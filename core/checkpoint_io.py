"""Checkpoint files that never execute code on load, and a checksum manifest per checkpoint.

- weights: safetensors (tensors only, no code path at all);
- plain state (optimizer and scheduler state, counters, RNG states): torch.save, read back with
  torch.load(weights_only=True), whose unpickler builds only tensors and plain containers and refuses
  any other object (a __reduce__ payload is an error, never a call);
- manifest.json: the sha256 of every file, written last; verify() checks it before anything is loaded,
  so a damaged file is named (file and checkpoint) instead of failing somewhere inside torch.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing a file, fails its checksum, or holds something that must not be loaded."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, **meta: object) -> None:
    """Checksum every file under `directory` (written last: a checkpoint without it is incomplete)."""
    directory = Path(directory)
    files = {p.relative_to(directory).as_posix(): sha256_file(p)
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({**meta, "sha256": files}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)


def verify(directory: Path, what: str = "checkpoint") -> dict:
    """Raise CheckpointError naming the first damaged or missing file; return the manifest."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["sha256"]
        assert isinstance(files, dict)
    except FileNotFoundError:
        raise CheckpointError(f"{what} {directory}: no {MANIFEST} (incomplete, or written by an older version "
                              f"that stored pickles: not loaded)") from None
    except (ValueError, KeyError, AssertionError, UnicodeDecodeError):
        raise CheckpointError(f"{what} {directory}: {MANIFEST} is damaged") from None
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{what} {directory}: file {name} is missing")
        if sha256_file(path) != expected:
            raise CheckpointError(f"{what} {directory}: file {name} is damaged (checksum mismatch)")
    return manifest


def save_weights(tensors: dict[str, torch.Tensor], path: Path) -> None:
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():  # safetensors refuses shared storage (tied weights): copy repeats
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    save_file(out, str(path))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None


def save_state(state: object, path: Path) -> None:
    torch.save(state, path)


def load_state(path: Path, map_location: object = "cpu") -> object:
    """torch.load with weights_only=True: tensors and plain containers only, never a call."""
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: refused or unreadable ({type(exc).__name__}: {first})") from None


def numpy_rng_plain(state: tuple) -> list:
    """np.random.get_state() with its array as a list: what weights_only loading accepts."""
    name, keys, pos, has_gauss, cached = state
    return [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)]


def numpy_rng_state(plain: list) -> tuple:
    name, keys, pos, has_gauss, cached = plain
    return name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached


def _deepspeed_state_classes() -> list:
    """The few DeepSpeed classes its own checkpoints hold (loss scalers, an enum, a fragment address):
    plain data, allowlisted by name for weights_only loading; anything else in a file is still refused."""
    found = []
    for module, names in (("deepspeed.runtime.fp16.loss_scaler", ("LossScaler", "DynamicLossScaler")),
                          ("deepspeed.runtime.zero.config", ("ZeroStageEnum",)),
                          ("deepspeed.utils.tensor_fragment", ("fragment_address",))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return found


def deepspeed_weights_only(engine) -> None:
    """Make a DeepSpeed engine read its checkpoints with weights_only=True (its own loader passes False)."""
    checkpoint_engine = getattr(engine, "checkpoint_engine", None)
    if checkpoint_engine is None:
        return

    def load(path: str, map_location=None):
        with torch.serialization.safe_globals(_deepspeed_state_classes()):
            return load_state(Path(path), map_location)
    checkpoint_engine.load = load
