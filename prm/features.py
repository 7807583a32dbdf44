"""Separator-feature cache for the frozen-backbone mode: one backbone pass per trajectory, ever.

With the backbone frozen, a trajectory's last hidden states at its step separators never change, so
they are computed once (length-bucketed, no grad) and the heads train on them alone; this is what makes
many-seed label-efficiency runs affordable on CPU. Keys are judges.base.item_key(question, steps) plus
the max_length used (a truncated trajectory keeps only the steps that fit). Stored as bf16 by default
(half the memory; the heads upcast to fp32). `save`/`load` use one safetensors file.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from judges.base import item_key


class FeatureCache:
    def __init__(self, max_length: int | None = None, dtype: torch.dtype = torch.bfloat16):
        self.max_length = max_length
        self.dtype = dtype
        self.store: dict[str, torch.Tensor] = {}

    def key(self, question: str, steps: list[str]) -> str:
        return f"{item_key(question, steps)}:{self.max_length}"

    def __len__(self) -> int:
        return len(self.store)

    def get(self, question: str, steps: list[str]) -> torch.Tensor | None:
        return self.store.get(self.key(question, steps))

    @torch.no_grad()
    def compute(self, prm, questions: list[str], steps: list[list[str]], batch_size: int = 8,
                progress: bool = False) -> list[torch.Tensor]:
        """Features [n_scored_steps, H] for every item, computing only the missing ones."""
        keys = [self.key(q, s) for q, s in zip(questions, steps)]
        missing = {}
        for i, k in enumerate(keys):
            if k not in self.store and k not in missing:
                missing[k] = (i, prm.encode(questions[i], steps[i], self.max_length))
        todo = sorted(missing.items(), key=lambda kv: len(kv[1][1][0]))  # bucket by token length
        was_training = prm.training
        prm.eval()
        bar = tqdm(total=len(todo), desc="features", disable=not progress or not todo, unit="traj")
        for start in range(0, len(todo), batch_size):
            chunk = todo[start: start + batch_size]
            batch = prm.collate([enc for _, (_, enc) in chunk])
            feats = prm.separator_features(batch).to(self.dtype)
            offset = 0
            for k, (_, (_, pos)) in chunk:
                self.store[k] = feats[offset: offset + len(pos)].clone()
                offset += len(pos)
            bar.update(len(chunk))
        bar.close()
        prm.train(was_training)
        return [self.store[k] for k in keys]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in self.store.items()}, str(tmp),
                  metadata={"max_length": str(self.max_length)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureCache":
        from safetensors import safe_open
        with safe_open(str(path), "pt") as fh:
            max_length = fh.metadata().get("max_length", "None")
        cache = cls(None if max_length == "None" else int(max_length))
        cache.store = load_file(str(path))
        if cache.store:
            cache.dtype = next(iter(cache.store.values())).dtype
        return cache
