"""Token batches for the PRM backbone: padded, length-bucketed or packed (setting prm.batch_layout).

padded    one [B, T] tensor, every sequence right-padded to the longest (T = max length).
bucketed  the batch sorted by length and cut into sub-batches of at most prm.pack_tokens padded tokens
          and at most BUCKET_MAX_PAD pad tokens each;
          they run one after another and their separator features are put back in batch order, so the
          loss (computed once over the whole batch) and its gradients equal the padded ones.
packed    sequences laid end to end in rows of at most prm.pack_tokens tokens (first-fit decreasing),
          position ids restarting at 0 for each sequence and no 2D attention mask: transformers then
          derives a block-diagonal causal mask from the position ids (`find_packed_sequence_indices`;
          flash-attention varlen on a GPU), so no token attends across sequences. A row's tail of pad
          tokens is one more "sequence" of its own, seen by nothing real.

All three give the same separator hidden states up to float rounding (tests/test_prm_batching.py); they
differ only in how many pad tokens the backbone computes (`PRMBatch.pad_fraction`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

LAYOUTS = ("padded", "bucketed", "packed")
# bucketed: a sequence joins the current sub-batch only while the sub-batch stays this little padded
# (on a CPU, smaller sub-batches cost about nothing; on a GPU, packed is the layout to use)
BUCKET_MAX_PAD = 0.1
Encoded = tuple[list[int], list[int]]           # token ids, separator positions (prm.model.EnsemblePRM.encode)


@dataclass
class PRMBatch:
    """A batch. Either token inputs (input_ids with attention_mask, or packed rows with position_ids) and the
    separator positions (rows, positions: one entry per scored step, flat, in batch order), or sub-batches
    (parts, bucketed), or precomputed separator features [N, H]."""
    step_mask: torch.Tensor                    # [B, S] bool: which (trajectory, step) slots are real
    input_ids: torch.Tensor | None = None      # [R, T]
    attention_mask: torch.Tensor | None = None  # [R, T]; None for packed rows
    rows: torch.Tensor | None = None           # [N] row of each scored step
    positions: torch.Tensor | None = None      # [N] token position of its separator
    features: torch.Tensor | None = None       # [N, H] cached separator hidden states
    position_ids: torch.Tensor | None = None   # [R, T] packed rows: restart at 0 for each sequence
    parts: list["PRMBatch"] | None = None      # bucketed: sub-batches run one after another
    order: torch.Tensor | None = None          # bucketed: concatenated parts' features -> batch order
    real_tokens: int = 0                       # non-pad tokens (for pad_fraction)
    starts: torch.Tensor | None = None         # [N] token position where each scored step's text begins
    columns: torch.Tensor | None = None        # [N, 2] log-prob columns computed before the batch (prm.logprob_columns)
    columns_fresh: list[bool] | None = None    # per item: its columns were computed for this batch (a backbone run)

    def to(self, device: torch.device | str) -> "PRMBatch":
        """The same batch with every tensor on `device`."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        if self.parts is not None:
            moved["parts"] = [p.to(device) for p in self.parts]
        return PRMBatch(**moved)

    @property
    def total_tokens(self) -> int:
        """Token slots the backbone computes, pad included."""
        if self.parts is not None:
            return sum(p.total_tokens for p in self.parts)
        return 0 if self.input_ids is None else self.input_ids.numel()

    @property
    def pad_fraction(self) -> float:
        total = self.total_tokens
        return 1.0 - self.real_tokens / total if total else 0.0


def step_mask_of(encoded: list[Encoded], n_steps: list[int] | None) -> torch.Tensor:
    """[B, S] with S = max number of steps (n_steps, default the scored ones)."""
    n_steps = n_steps or [len(p) for _, p in encoded]
    mask = torch.zeros((len(encoded), max(n_steps + [1])), dtype=torch.bool)
    for b, (_, pos) in enumerate(encoded):
        mask[b, : len(pos)] = True
    return mask


def step_starts(first: int, pos: list[int]) -> list[int]:
    """Where each step's tokens begin: `first` (the prompt's length) for step 0, after the previous separator."""
    return [first] + [p + 1 for p in pos[:-1]] if pos else []


def _flat(columns: list[torch.Tensor] | None) -> torch.Tensor | None:
    """Per-item [n_steps, 2] columns -> [N, 2] in the batch's flat step order (item by item)."""
    return None if columns is None else torch.cat(columns) if columns else torch.zeros((0, 2))


def padded(encoded: list[Encoded], pad_id: int, step_mask: torch.Tensor, firsts: list[int] | None = None,
           columns: list[torch.Tensor] | None = None) -> PRMBatch:
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), length), dtype=torch.long)
    rows, positions, starts = [], [], []
    for b, (ids, pos) in enumerate(encoded):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        rows += [b] * len(pos)
        positions += pos
        starts += step_starts(firsts[b], pos) if firsts is not None else []
    return PRMBatch(step_mask, input_ids, attention, torch.tensor(rows, dtype=torch.long),
                    torch.tensor(positions, dtype=torch.long), real_tokens=sum(len(ids) for ids, _ in encoded),
                    starts=torch.tensor(starts, dtype=torch.long) if firsts is not None else None,
                    columns=_flat(columns))


def bucketed(encoded: list[Encoded], pad_id: int, step_mask: torch.Tensor, max_tokens: int,
             firsts: list[int] | None = None, columns: list[torch.Tensor] | None = None) -> PRMBatch:
    """Sorted by length, cut wherever one more sequence would pad the sub-batch past max_tokens."""
    by_length = sorted(range(len(encoded)), key=lambda b: len(encoded[b][0]))
    groups: list[list[int]] = []
    for b in by_length:  # ascending: the newcomer is the sub-batch's longest
        slots = (len(groups[-1]) + 1) * len(encoded[b][0]) if groups else 0
        real = sum(len(encoded[i][0]) for i in groups[-1]) + len(encoded[b][0]) if groups else 0
        if groups and slots <= max_tokens and real >= (1 - BUCKET_MAX_PAD) * slots:
            groups[-1].append(b)
        else:
            groups.append([b])
    parts = [padded([encoded[b] for b in g], pad_id, step_mask[g], None if firsts is None else [firsts[b] for b in g],
                    None if columns is None else [columns[b] for b in g]) for g in groups]
    # flat step k of the concatenated parts belongs to trajectory groups..., step ...: invert to batch order
    starts = torch.cumsum(torch.tensor([0] + [len(p) for _, p in encoded]), 0).tolist()
    concat = [starts[b] + s for g in groups for b in g for s in range(len(encoded[b][1]))]
    order = torch.empty(len(concat), dtype=torch.long)
    order[torch.tensor(concat, dtype=torch.long)] = torch.arange(len(concat))
    return PRMBatch(step_mask, parts=parts, order=order, real_tokens=sum(len(ids) for ids, _ in encoded))


def packed(encoded: list[Encoded], pad_id: int, step_mask: torch.Tensor, max_tokens: int,
           firsts: list[int] | None = None, columns: list[torch.Tensor] | None = None) -> PRMBatch:
    """First-fit decreasing into rows of <= max_tokens (a longer sequence gets a row of its own)."""
    row_of, offset_of, fill = [0] * len(encoded), [0] * len(encoded), []
    for b in sorted(range(len(encoded)), key=lambda b: -len(encoded[b][0])):
        n = len(encoded[b][0])
        r = next((r for r, used in enumerate(fill) if used + n <= max_tokens), len(fill))
        if r == len(fill):
            fill.append(0)
        row_of[b], offset_of[b] = r, fill[r]
        fill[r] += n
    length = max(fill)
    input_ids = torch.full((len(fill), length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(fill), length), dtype=torch.long)
    for r, used in enumerate(fill):  # the pad tail: a sequence of its own (positions restart at 0)
        position_ids[r, used:] = torch.arange(length - used)
    rows, positions, starts = [], [], []
    for b, (ids, pos) in enumerate(encoded):
        r, o = row_of[b], offset_of[b]
        input_ids[r, o: o + len(ids)] = torch.tensor(ids)
        position_ids[r, o: o + len(ids)] = torch.arange(len(ids))
        rows += [r] * len(pos)
        positions += [o + p for p in pos]
        starts += [o + t for t in step_starts(firsts[b], pos)] if firsts is not None else []
    return PRMBatch(step_mask, input_ids, None, torch.tensor(rows, dtype=torch.long),
                    torch.tensor(positions, dtype=torch.long), position_ids=position_ids,
                    real_tokens=sum(len(ids) for ids, _ in encoded),
                    starts=torch.tensor(starts, dtype=torch.long) if firsts is not None else None,
                    columns=_flat(columns))


def build(encoded: list[Encoded], pad_id: int, layout: str = "padded", max_tokens: int = 2048,
          n_steps: list[int] | None = None, firsts: list[int] | None = None,
          columns: list[torch.Tensor] | None = None) -> PRMBatch:
    """The batch of `encoded` in `layout` (on CPU); `firsts` (each item's prompt length) adds step starts;
    `columns` (each item's [n_steps, 2] log-prob columns, computed elsewhere) ride along in step order."""
    mask = step_mask_of(encoded, n_steps)
    if layout == "padded":
        return padded(encoded, pad_id, mask, firsts, columns)
    if layout == "bucketed":
        return bucketed(encoded, pad_id, mask, max_tokens, firsts, columns)
    if layout == "packed":
        return packed(encoded, pad_id, mask, max_tokens, firsts, columns)
    raise ValueError(f"prm.batch_layout must be one of {LAYOUTS}, got '{layout}'")
