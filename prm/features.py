"""Separator-feature cache for the frozen-backbone mode: one backbone pass per trajectory, ever.

With the backbone frozen, a trajectory's last hidden states at its step separators never change, so
they are computed once (length-bucketed, no grad) and the heads train on them alone; this is what makes
many-seed label-efficiency runs affordable on CPU. Keys are judges.base.item_key(question, steps); a
trajectory truncated at max_length keeps only the steps that fit and is stored under "<key>:<max_length>"
(full features serve any max_length: the frozen backbone saw the whole context). Stored as bf16 by default
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

    def __len__(self) -> int:
        return len(self.store)

    @property
    def width(self) -> int | None:
        """Features per step (the hidden size, + 2 for prm.step_features=hidden_logprob); None when empty."""
        return next(iter(self.store.values())).shape[-1] if self.store else None

    def get(self, question: str, steps: list[str], max_length: int | None = None) -> torch.Tensor | None:
        key = item_key(question, steps)
        return self.store.get(key, self.store.get(f"{key}:{max_length}") if max_length else None)

    @torch.no_grad()
    def compute(self, prm, questions: list[str], steps: list[list[str]], batch_size: int = 8,
                progress: bool = False, max_length: int | None | str = "default") -> list[torch.Tensor]:
        """Features [n_scored_steps, H] for every item, computing only the missing ones.
        max_length: "default" = the cache's own; None = never truncate (scoring)."""
        max_length = self.max_length if max_length == "default" else max_length
        keys, missing = [], {}
        for i, (q, s) in enumerate(zip(questions, steps)):
            key = item_key(q, s)
            if key in self.store or (max_length and f"{key}:{max_length}" in self.store):
                keys.append(key if key in self.store else f"{key}:{max_length}")
                continue
            ids, pos = prm.encode(q, s, max_length)
            key = key if len(pos) == len(s) else f"{key}:{max_length}"
            keys.append(key)
            missing.setdefault(key, (i, (ids, pos)))
        todo = sorted(missing.items(), key=lambda kv: len(kv[1][1][0]))  # bucket by token length
        was_training = prm.training
        prm.eval()
        bar = tqdm(total=len(todo), desc="features", disable=not progress or not todo, unit="traj")
        for start in range(0, len(todo), batch_size):
            chunk = todo[start: start + batch_size]
            batch = prm.collate([enc for _, (_, enc) in chunk], questions=[questions[i] for _, (i, _) in chunk])
            feats = prm.separator_features(batch).to("cpu", self.dtype)  # kept (and saved) on CPU; batches move
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
