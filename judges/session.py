"""A judge as a labelling command uses one: opened with its ledger and checked before any generation,
and each batch labelled with the counts a run reports.

    judge, ledger = open_judge(cfg.judge, default_path=out / "ledger.sqlite")   # fails here, not at round 1
    verdicts, counts, wall_s = label_counted(ledger, judge, items)
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from judges.base import Cost, Item, Judge, Verdict
from judges.registry import make_judge
from judges.ledger import LabelCounts, LabelLedger

log = logging.getLogger(__name__)


def open_judge(cfg: Any, default_path: str | Path | None = None, **context: Any) -> tuple[Judge, LabelLedger]:
    """The judge and its ledger from a validated judge config. Before returning: a warning when the
    ledger holds labels of this kind of judge under another identity only (they would be paid again),
    then, with `check_at_start` (llm), the start-up check (endpoint, key, model), charged to the ledger."""
    judge = make_judge(cfg, **context)
    ledger = LabelLedger.from_config(cfg, default_path=default_path)
    try:
        explain_identity(judge.identity, ledger)
        if getattr(cfg, "check_at_start", False):
            ledger.charge(judge.identity, judge.check(), "start-up check")
    except BaseException:
        ledger.close()
        raise
    return judge, ledger


def identity_fields(identity: str) -> dict[str, str]:
    """'llm:m|T=0.5|max_tokens=4096' -> {'kind': 'llm', 'model': 'm', 'T': '0.5', 'max_tokens': '4096'}."""
    head, *rest = identity.split("|")
    kind, _, model = head.partition(":")
    fields = {"kind": kind, **({"model": model} if model else {})}
    for part in rest:
        name, _, value = part.partition("=")
        fields[name] = value
    return fields


def explain_identity(identity: str, ledger: LabelLedger) -> list[str]:
    """Lines (also logged as warnings) naming what changed when the ledger holds labels of the same kind
    of judge under other identities and none under this one: those labels answer nothing now."""
    counts = dict(ledger.query("SELECT judge, COUNT(*) FROM labels GROUP BY judge"))
    if identity in counts:
        return []
    mine = identity_fields(identity)
    lines = []
    for other, n in sorted(counts.items()):
        theirs = identity_fields(other)
        if theirs["kind"] != mine["kind"]:
            continue
        changed = [f"{k}: {theirs.get(k)} -> {mine.get(k)}" for k in dict.fromkeys([*theirs, *mine])
                   if theirs.get(k) != mine.get(k)]
        lines.append(f"{ledger.path} holds {n} labels of judge {other}, none of {identity} ({', '.join(changed)}): "
                     f"every setting in a judge's identity can change its answers, so those labels are not "
                     f"reused and each item is paid again; set them back to reuse the labels")
    for line in lines:
        log.warning(line)
    return lines


def label_counted(ledger: LabelLedger, judge: Judge, items: list[Item]) -> tuple[list[Verdict | None], LabelCounts, float]:
    """ledger.label with what it did (LabelCounts) and its wall-clock seconds (requests in flight overlap:
    their own seconds add up to more than the caller waited)."""
    start = time.perf_counter()
    verdicts = ledger.label(judge, items)
    return verdicts, ledger.last, time.perf_counter() - start


def judge_metrics(counts: LabelCounts | None, wall_s: float, calls: bool = False) -> dict[str, float]:
    """The judge/* metrics of one labelling call (counts None: nothing was judged); `calls`: with what it paid."""
    counts = counts or LabelCounts()
    out = {"judge/invalid": counts.invalid, "judge/refused_budget": counts.refused_budget,
           "judge/failed": counts.failed, "judge/ledger_hits": counts.ledger_hits, "judge/repeats": counts.repeats,
           "judge/seconds": wall_s}
    if calls:
        out.update({"judge/calls": counts.cost.calls, "judge/tokens": counts.cost.tokens})
    return out
