"""Online PRM training on every paid label: a bounded replay of judged trajectories read from the ledger.

Without it, the online PRM takes one optimizer step per round on that round's labels and never sees
them again. With it, each round:

    replay = LabelReplay(ledger, judge.identity, cfg.replay, seed, heldout=[...judged Trajectory...])
    metrics = replay.train(learner)     # read the labels committed since last round, then cfg.steps
                                        # PRM updates on batches mixing new (new_fraction) and older labels;
                                        # then PRM quality on the fixed held-out judged set (prm.quality)

Only committed ledger rows are read (a reservation is not a label: it is unpaid), never the held-out
set's (judged through the same ledger, so inside the same budget), and a row is trained on only if its verdict is valid (first_error not None, -1 <= first_error < number of steps). The buffer
keeps the newest `capacity` valid labels. The labels one refresh reads enter the buffer sorted by their
text, not in the ledger's commit order (which follows whichever judge reply landed first), so the same
seed draws the same batches at any number of judge requests in flight. State = (the last ledger id of
each refresh, sampler RNG): the buffer is rebuilt from the ledger on load, refresh by refresh, so a
resumed run draws exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import random
from collections import deque

from judges.base import item_key
from prm.config import ReplayConfig
from tasks.problems import Trajectory
from prm.quality import heldout_quality


def valid_label(first_error: int | None, steps: list[str]) -> bool:
    return first_error is not None and -1 <= first_error < len(steps) and len(steps) > 0


class LabelReplay:
    def __init__(self, ledger, judge_identity: str, cfg: ReplayConfig, seed: int = 0,
                 heldout: list[Trajectory] | None = None, threshold: float = 0.5):
        self.ledger, self.identity, self.cfg = ledger, judge_identity, cfg
        self.heldout, self.threshold = heldout or [], threshold
        self.heldout_keys = {item_key(t.question, t.steps) for t in self.heldout}  # measured on, never trained on
        self.buffer: deque[tuple[int, Trajectory]] = deque(maxlen=cfg.capacity)
        self.last_id = 0
        self.refreshes: list[int] = []  # the last ledger id each refresh read (resume replays them one by one)
        self.rng = random.Random(f"replay:{seed}")

    def _add(self, rows) -> list[tuple[int, Trajectory]]:
        added = []
        for row_id, question, steps, first_error in sorted(rows, key=lambda r: (r[1], r[2])):
            self.last_id = max(self.last_id, row_id)
            if valid_label(first_error, steps) and item_key(question, steps) not in self.heldout_keys:
                item = (row_id, Trajectory(question, steps, first_error, source=f"ledger:{row_id}"))
                self.buffer.append(item)
                added.append(item)
        return added

    def refresh(self) -> list[tuple[int, Trajectory]]:
        """Labels committed since the last call (valid ones enter the buffer); returns them."""
        added = self._add(self.ledger.rows(self.identity, self.last_id))
        if not self.refreshes or self.refreshes[-1] != self.last_id:
            self.refreshes.append(self.last_id)
        return added

    def batches(self, new: list[tuple[int, Trajectory]]) -> list[list[Trajectory]]:
        """cfg.steps batches: new_fraction of each from `new`, the rest from older buffered labels
        (all from whichever side exists when the other is empty); sampling without replacement within a batch."""
        in_buffer = {row_id for row_id, _ in self.buffer}
        new = [(i, t) for i, t in new if i in in_buffer]  # a tiny capacity may already have evicted some
        new_ids = {i for i, _ in new}
        old = [(i, t) for i, t in self.buffer if i not in new_ids]
        size, out = self.cfg.batch_size, []
        for _ in range(self.cfg.steps):
            n_new = min(len(new), round(self.cfg.new_fraction * size) if old else size)
            n_old = min(len(old), size - n_new)
            if n_old < size - n_new:  # not enough old labels: fill with new ones
                n_new = min(len(new), size - n_old)
            picked = self.rng.sample(new, n_new) + self.rng.sample(old, n_old)
            if picked:
                out.append([t for _, t in picked])
        return out

    def train(self, learner) -> dict[str, float]:
        new = self.refresh()
        losses, seen = [], 0
        for batch in self.batches(new):
            losses.append(learner.update(batch, [True] * len(batch))["loss"])
            seen += len(batch)
        out = {"prm/replay_size": len(self.buffer), "prm/replay_new": len(new), "prm/trained": seen}
        if losses:
            out["prm/loss"] = sum(losses) / len(losses)
        return {**out, **self.heldout_quality(learner)}

    def heldout_quality(self, scorer) -> dict[str, float]:
        """Step AUROC (pooled, within problem) and first-error F1 of `scorer` (anything with .score) on
        the test half of the fixed held-out judged set, F1 at the threshold tuned on its validation half
        (prm.quality.heldout_quality)."""
        if not self.heldout:
            return {}
        scores = [s.mean for s in scorer.score([t.question for t in self.heldout], [t.steps for t in self.heldout])]
        return heldout_quality([t.question for t in self.heldout], [t.first_error for t in self.heldout], scores,
                               self.threshold, prefix="prm/heldout_")

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"last_id": self.last_id, "refreshes": list(self.refreshes), "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.clear()
        self.last_id, previous = 0, 0
        self.refreshes = list(state.get("refreshes") or [state["last_id"]])
        for upto in self.refreshes:
            self._add(self.ledger.rows(self.identity, previous, upto))
            previous = upto
        self.last_id = state["last_id"]
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
