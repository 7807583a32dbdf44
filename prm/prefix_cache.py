"""Step-wise PRM scoring that reuses the backbone's keys and values of prefixes scored the call before.

Beam search and DVTS score sequences and then their children: the same question and steps plus one
new step. `EnsemblePRM.score` runs each child's whole text through the backbone again, so a search
of depth D pays about D/2 times the tokens it needs, and on a CPU the PRM dominates the search.
`PrefixCachedScorer` keeps, for every sequence of its last call, the per-layer keys and values and
the separator features. A child whose parent (all its steps but the last) was among them runs only
its new step's tokens through the backbone, attending to the parent's cache. Attention is causal,
so the scores equal a full pass up to float rounding (tests/test_prm_prefix_cache.py).

Entries live for one call: each call's sequences are the next call's parents, which is exactly the
access pattern of one search iteration after another. `max_bytes` bounds what is kept; sequences
past it are scored but not cached, and their children fall back to full passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from transformers import DynamicCache

from prm.model import EnsemblePRM, StepScores, _to_scores


@dataclass
class _Entry:
    ids: list[int]                 # question prompt + steps, each closed by the separator token
    keys: list[torch.Tensor]       # per layer [kv_heads, len(ids), head_dim]
    values: list[torch.Tensor]
    features: torch.Tensor         # [n_steps, hidden] backbone output at the separators

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values, self.features))


class _Item(NamedTuple):
    index: int                     # position in the call's input
    key: tuple[str, tuple[str, ...]]   # (question, steps): how its children find it next call
    ids: list[int]
    positions: list[int]           # separator positions in ids
    parent: _Entry | None          # the cached sequence without the last step, if any


def supports(prm: EnsemblePRM) -> bool:
    """The cache keeps separator states only: log-prob step features need each step's tokens again."""
    return prm.cfg.step_features == "hidden"


class PrefixCachedScorer:
    """A drop-in for `prm.score(questions, steps_list)` in step-wise search (see the module doc)."""

    def __init__(self, prm: EnsemblePRM, batch_size: int | None = None, max_bytes: float = 4 * 2**30):
        prm._need_backbone("prefix-cached scoring")
        if not supports(prm):
            raise ValueError(f"prefix-cached scoring keeps separator states only; prm.step_features="
                             f"{prm.cfg.step_features} needs the plain scorer (prm.score)")
        self.prm, self.batch_size, self.max_bytes = prm, batch_size or prm.cfg.batch_size, max_bytes
        self._entries: dict[tuple[str, tuple[str, ...]], _Entry] = {}
        self.tokens_run = 0        # tokens through the backbone
        self.tokens_reused = 0     # prefix tokens read from a cache instead

    @torch.no_grad()
    def __call__(self, questions: list[str], steps_list: list[list[str]]) -> list[StepScores]:
        was_training = self.prm.training
        self.prm.eval()
        todo = []
        for i, (question, steps) in enumerate(zip(questions, steps_list)):
            steps = list(steps)
            ids, positions = self.prm.encode(question, steps)
            parent = self._entries.get((question, tuple(steps[:-1]))) if steps else None
            if parent is not None and ids[: len(parent.ids)] != parent.ids:
                parent = None      # a tokenizer that merges across the separator: no reuse, stay exact
            todo.append(_Item(i, (question, tuple(steps)), ids, positions, parent))
        todo.sort(key=lambda it: len(it.ids) - (len(it.parent.ids) if it.parent else 0))  # by new tokens
        out: list[StepScores | None] = [None] * len(todo)
        kept: dict[tuple[str, tuple[str, ...]], _Entry] = {}
        budget = self.max_bytes
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start: start + self.batch_size]
            for item, entry in zip(chunk, self._forward(chunk)):
                # the backbone ran only the tokens past the cached parent (docs/search.md, Compute)
                ran = len(item.ids) - (len(item.parent.ids) if item.parent else 0)
                out[item.index] = _to_scores(self.prm.heads(entry.features.float()), forward_tokens=ran)
                if entry.nbytes <= budget:
                    kept[item.key] = entry
                    budget -= entry.nbytes
        self._entries = kept
        self.prm.train(was_training)
        return out  # type: ignore[return-value]

    def _forward(self, chunk: list[_Item]) -> list[_Entry]:
        """One backbone pass over the new tokens of every item; parents' caches padded into one past."""
        device, pad = self.prm.device, self.prm.tokenizer.pad_token_id
        past = [len(it.parent.ids) if it.parent else 0 for it in chunk]
        new = [it.ids[p:] for it, p in zip(chunk, past)]
        width_past, width_new = max(past), max(len(n) for n in new)
        input_ids = torch.full((len(chunk), width_new), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width_past + width_new), dtype=torch.long)
        positions = torch.zeros((len(chunk), width_new), dtype=torch.long)
        for b, (p, n) in enumerate(zip(past, new)):
            input_ids[b, : len(n)] = torch.tensor(n)
            mask[b, :p] = 1                                   # the parent's tokens; its padding stays masked
            mask[b, width_past: width_past + len(n)] = 1
            positions[b] = p + torch.arange(width_new)        # true positions: RoPE must match a full pass
        cache = DynamicCache(ddp_cache_data=self._padded_past(chunk, width_past)) if width_past else None
        out = self.prm.body(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                            position_ids=positions.to(device), past_key_values=cache, use_cache=True)
        hidden, layers = out.last_hidden_state, out.past_key_values.layers
        entries = []
        for b, (it, p, n) in enumerate(zip(chunk, past, new)):
            span = slice(width_past, width_past + len(n))
            keys = [torch.cat([layer.keys[b, :, :p], layer.keys[b, :, span]], dim=1) for layer in layers]
            values = [torch.cat([layer.values[b, :, :p], layer.values[b, :, span]], dim=1) for layer in layers]
            fresh = hidden[b, [q - p for q in it.positions if q >= p]]
            features = torch.cat([it.parent.features, fresh]) if it.parent else fresh
            entries.append(_Entry(it.ids, keys, values, features))
            self.tokens_run += len(n)
            self.tokens_reused += p
        return entries

    def _padded_past(self, chunk: list[_Item], width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        some = next(it.parent for it in chunk if it.parent)
        layers = []
        for layer in range(len(some.keys)):
            heads, _, dim = some.keys[layer].shape
            k = some.keys[layer].new_zeros((len(chunk), heads, width, dim))
            v = torch.zeros_like(k)
            for b, it in enumerate(chunk):
                if it.parent:
                    k[b, :, : len(it.parent.ids)] = it.parent.keys[layer]
                    v[b, :, : len(it.parent.ids)] = it.parent.values[layer]
            layers.append((k, v))
        return layers
