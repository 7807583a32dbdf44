"""Checkpoint files that never execute code on load, and a checksum manifest per checkpoint.

- weights: safetensors (tensors only, no code path at all);
- plain state (optimizer and scheduler state, counters, RNG states): torch.save, read back with
  torch.load(weights_only=True), whose unpickler builds only tensors and plain containers and refuses
  any other object (a __reduce__ payload is an error, never a call);
- manifest.json: the sha256 and size of every file, written last. The digests are computed while the
  files are written (`recording_digests`: every save_state / save_weights, and DeepSpeed's own saves
  through `deepspeed_weights_only`, hash the bytes on their way to disk), not by reading a round back;
  a file written by other means (DeepSpeed's `latest`) is hashed by reading it. verify() checks the
  manifest before anything is loaded: every file present with its size, and with full=True its sha256
  (a re-read of the whole checkpoint: opt-in), so a damaged file is named (file and checkpoint) instead
  of failing somewhere inside torch.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import pickle
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing a file, fails its checksum, or holds something that must not be loaded."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_RECORDING: dict[str, tuple[str, int]] | None = None   # resolved path -> (sha256, bytes) while recording


@contextlib.contextmanager
def recording_digests() -> Iterator[dict[str, tuple[str, int]]]:
    """Within the block, every file this process writes through save_state / save_weights (and DeepSpeed's
    checkpoint engine, see deepspeed_weights_only) has its digest recorded in the yielded dict."""
    global _RECORDING
    outer, _RECORDING = _RECORDING, {} if _RECORDING is None else _RECORDING
    try:
        yield _RECORDING
    finally:
        _RECORDING = outer


def rename_dir(src: Path, dst: Path) -> None:
    """Rename a directory written while recording; its files' recorded digests follow it."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    src.rename(dst)
    if _RECORDING is not None:
        for key in [k for k in _RECORDING if Path(k).is_relative_to(src)]:
            _RECORDING[str(dst / Path(key).relative_to(src))] = _RECORDING.pop(key)


class _HashingFile:
    """A write-only file that hashes the bytes it passes to disk."""

    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(memoryview(data).cast("B"))
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


@contextlib.contextmanager
def _hashed_open(path: Path):
    with open(path, "wb") as handle:
        out = _HashingFile(handle)
        yield out
    if _RECORDING is not None:
        _RECORDING[str(Path(path).resolve())] = (out.digest.hexdigest(), out.size)


def write_manifest(directory: Path, digests: dict[str, tuple[str, int]] | None = None, **meta: object) -> None:
    """Checksum every file under `directory` (written last: a checkpoint without it is incomplete). A file's
    digest comes from `digests` (resolved path -> (sha256, bytes); default: those recorded so far) when its
    size on disk matches, else from reading it."""
    directory = Path(directory)
    known = digests if digests is not None else (_RECORDING or {})
    files, sizes = {}, {}
    for p in sorted(directory.rglob("*")):
        if not p.is_file() or p.name == MANIFEST:
            continue
        name, size = p.relative_to(directory).as_posix(), p.stat().st_size
        digest, recorded_size = known.get(str(p.resolve()), (None, -1))
        files[name], sizes[name] = (digest if recorded_size == size else sha256_file(p)), size
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({**meta, "sha256": files, "bytes": sizes}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)


def verify(directory: Path, what: str = "checkpoint", full: bool = False) -> dict:
    """Raise CheckpointError naming the first missing, resized or (full=True: re-hashed) damaged file; return
    the manifest. A manifest without sizes (an older one) is always checked in full."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["sha256"]
        sizes = manifest.get("bytes")
        assert isinstance(files, dict) and (sizes is None or isinstance(sizes, dict))
    except FileNotFoundError:
        raise CheckpointError(f"{what} {directory}: no {MANIFEST} (incomplete, or written by an older version "
                              f"that stored pickles: not loaded)") from None
    except (ValueError, KeyError, AssertionError, UnicodeDecodeError):
        raise CheckpointError(f"{what} {directory}: {MANIFEST} is damaged") from None
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{what} {directory}: file {name} is missing")
        if sizes is not None and path.stat().st_size != sizes.get(name):
            raise CheckpointError(f"{what} {directory}: file {name} is damaged (size {path.stat().st_size} "
                                  f"bytes, {sizes.get(name)} written)")
        if (full or sizes is None) and sha256_file(path) != expected:
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
    data = safetensors_bytes(out)
    with _hashed_open(path) as handle:
        handle.write(data)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None


def save_state(state: object, path: Path) -> None:
    with _hashed_open(path) as handle:
        torch.save(state, handle)


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
    """Make a DeepSpeed engine read its checkpoints with weights_only=True (its own loader passes False) and
    write them through save_state (so their digests are recorded while they are written)."""
    checkpoint_engine = getattr(engine, "checkpoint_engine", None)
    if checkpoint_engine is None:
        return

    def load(path: str, map_location=None):
        with torch.serialization.safe_globals(_deepspeed_state_classes()):
            return load_state(Path(path), map_location)
    checkpoint_engine.load = load
    # its saves through save_state: hashed as they are written (recording_digests), plain data as before
    checkpoint_engine.save = lambda state_dict, path: save_state(state_dict, Path(path))
