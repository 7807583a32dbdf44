"""The two log-prob columns of prm.step_features=hidden_logprob | hidden_policy_logprob, and the store that
lets a trained-backbone PRM read the frozen initial backbone's columns once per item.

    step_columns(batch, hidden, head) -> [N, 2]   log min / log mean token probability of each scored step
    ReferenceColumns(capacity).columns(ref, encoded, firsts, build) -> (per-item [n_steps, 2] columns,
                                                  which items ran): the frozen backbone's, once per item

hidden_policy_logprob with prm.train_mode=full|lora reads the columns under a frozen copy of the initial
backbone. That copy never changes, so an item's columns depend on its tokens alone: EnsemblePRM computes
them in the first batch that holds the item and every later batch reads them back (a replayed label is
trained on in round after round, the held-out set is scored every round, a rollout is scored and then
trained on). Recomputing them cost a second backbone pass on every PRM batch, as long as the trained
body's own forward. A stored value equals a recomputation up to fp32 reassociation (another batch pads
the item to another length), as prm.features' cached separator features do.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import torch

LOGPROB_FLOOR = -20.0  # token log-probs below this count as this: one impossible token does not dominate the heads


def step_columns(batch, hidden: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    """[N, 2]: log min and log mean token probability of each scored step's tokens (from its start to
    its separator) under `head` read on `hidden` (a padded or packed batch, not a bucketed one). Row by
    row: [T, vocab] logits at a time. Clamped at LOGPROB_FLOOR."""
    per_token = torch.zeros(batch.input_ids.shape, device=hidden.device)
    for r in range(hidden.shape[0]):  # per_token[r, t] = log p(token t | tokens < t); 0 at t = 0
        logp = head(hidden[r, :-1]).float().log_softmax(-1)
        per_token[r, 1:] = logp.gather(-1, batch.input_ids[r, 1:, None]).squeeze(-1)
    per_token = per_token.clamp_min(LOGPROB_FLOOR)[batch.rows]                     # [N, T]
    t = torch.arange(per_token.shape[1], device=hidden.device)
    inside = (t >= batch.starts[:, None]) & (t < batch.positions[:, None])          # the step's own tokens
    count = inside.sum(-1)
    low = torch.where(inside, per_token, torch.zeros_like(per_token)).min(-1).values  # <= 0; 0 if empty
    mean = (per_token * inside).sum(-1) / count.clamp_min(1)
    return torch.stack([low, mean], -1)


def column_key(ids: list[int], positions: list[int], first: int) -> bytes:
    """What an item's columns are a function of: its token ids, separator positions and where its steps
    begin. A 16-byte digest, not the ids themselves: a store of 65k items stays a few MB."""
    flat = np.asarray([len(ids), len(positions), first, *ids, *positions], dtype=np.int64)
    return hashlib.blake2b(flat.tobytes(), digest_size=16).digest()


@torch.no_grad()
def reference_step_columns(ref, batch) -> torch.Tensor:
    """step_columns under the frozen initial backbone `ref` (a causal LM), its own pass without
    gradients: [N, 2] in the batch's step order (a bucketed batch part by part)."""
    if batch.parts is not None:
        return torch.cat([reference_step_columns(ref, part) for part in batch.parts])[batch.order]
    ref.to(batch.input_ids.device)   # no-op after the first call; not a submodule, so .to(prm) does not move it
    hidden = ref.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids, use_cache=False).last_hidden_state
    return step_columns(batch, hidden, ref.get_output_embeddings())


class ReferenceColumns:
    """The frozen backbone's columns by item: column_key -> [n_steps, 2] fp32 CPU tensor, at most `capacity`
    items (the oldest goes first; capacity 0 keeps nothing: every batch recomputes its columns)."""

    def __init__(self, capacity: int = 1 << 16):
        self.capacity = capacity
        self.store: dict[bytes, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.store)

    def __contains__(self, key: bytes) -> bool:
        return key in self.store

    def put(self, key: bytes, columns: torch.Tensor) -> None:
        self.store[key] = columns
        while len(self.store) > self.capacity:
            self.store.pop(next(iter(self.store)))

    def columns(self, ref, encoded: list[tuple[list[int], list[int]]], firsts: list[int],
                build: Callable[[list, list[int]], object]) -> tuple[list[torch.Tensor], list[bool]]:
        """Each item's columns, and which items this call ran `ref` for: only items not stored run, each
        once (a duplicate reads its first copy), in one batch `build(items, firsts)` of their own."""
        keys = [column_key(ids, pos, first) for (ids, pos), first in zip(encoded, firsts)]
        found = {k: self.store[k] for k in keys if k in self.store}
        todo: dict[bytes, int] = {}            # key -> its first item
        for b, key in enumerate(keys):
            if key not in found and key not in todo:
                todo[key] = b
        if todo:
            run = list(todo.values())
            flat = reference_step_columns(ref, build([encoded[b] for b in run], [firsts[b] for b in run]))
            for key, cols in zip(todo, flat.to("cpu", torch.float32).split([len(encoded[b][1]) for b in run])):
                found[key] = cols.clone()
                self.put(key, found[key])
        ran = set(todo.values())
        return [found[k] for k in keys], [b in ran for b in range(len(encoded))]
