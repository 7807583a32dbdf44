"""What a run shows: phase timers, per-round metrics (JSONL + TensorBoard), the end-of-run table and plot."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# What each column measures: `pass` is on the round's own training prompts (it moves with which problems
# the stream drew); `held-out pass` on problems the run never trains on (rl/evaluate.py), at round 0 and
# every policy_eval.every rounds; the PRM's AUROC / F1 on a held-out judged set, F1 at the threshold tuned on its
# validation half (prm.replay); judge calls paid, and picks the ledger already had (not paid again); picks that
# repeat another of the same round word for word (paid once) are in the metrics as judge/repeats.
SUMMARY_COLUMNS = [("round", "round", "{:d}"), ("pass_rate", "pass (train prompts)", "{:.3f}"),
                   ("eval/pass", "held-out pass", "{:.3f}"), ("eval/pass_greedy", "held-out greedy", "{:.3f}"),
                   ("reward/process", "R proc", "{:.3f}"), ("select/fraction", "sel", "{:.2f}"),
                   ("judge/calls", "judge paid", "{:d}"), ("judge/ledger_hits", "ledger hits", "{:d}"),
                   ("judge/invalid", "invalid", "{:d}"),
                   ("prm/heldout_auroc", "held-out AUROC", "{:.3f}"),
                   ("prm/heldout_auroc_within", "within-problem", "{:.3f}"),
                   ("prm/heldout_f1", "held-out F1 (tuned tau)", "{:.3f}"), ("prm/heldout_tau", "tau", "{:.2f}"),
                   ("timing/round", "secs", "{:.1f}")]


class PhaseTimer:
    """`with timer("generate"): ...` records seconds under timing/generate and, with a CUDA `device`, the
    phase's peak allocated memory in GB under gpu/mem_generate (the peak counter is reset when a phase
    starts; phases that overlap in time, rl.schedule's back half, share that one counter)."""

    def __init__(self, on_start=None, device=None):
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self.on_start = on_start  # e.g. shows the running phase on the progress bar
        self.device = device if device is not None and str(device).startswith("cuda") else None

    @contextmanager
    def __call__(self, phase: str):
        if self.on_start is not None:
            self.on_start(phase)
        if self.device is not None:
            import torch
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"timing/{phase}"] = self.seconds.get(f"timing/{phase}", 0.0) + time.perf_counter() - start
            if self.device is not None:
                import torch
                peak = torch.cuda.max_memory_allocated(self.device) / 1e9
                self.peaks[f"gpu/mem_{phase}"] = max(self.peaks.get(f"gpu/mem_{phase}", 0.0), peak)


def std_histogram(values: list[float], bins=(0, .005, .01, .02, .05, .1, .2, 1.0)) -> dict[str, int]:
    """Ensemble std per step, counted in fixed bins (the JSONL copy of the TensorBoard histogram)."""
    counts, _ = np.histogram(np.clip(values, 0, 1), bins=bins) if values else (np.zeros(len(bins) - 1, int), None)
    return {f"prm/std_hist/{lo:g}-{hi:g}": int(c) for lo, hi, c in zip(bins[:-1], bins[1:], counts)}


def one_seed_note(seed: int) -> str:
    return (f"one seed (trainer.seed={seed}): no interval; a difference between two runs needs several seeds "
            "and problem-level intervals (bench/claims)")


def summary_table(history: list[dict], title: str, seed: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=one_seed_note(seed) if seed is not None else None)
    for _, header, _ in SUMMARY_COLUMNS:
        table.add_column(header, justify="right")
    for m in history:
        cells = []
        for key, _, fmt in SUMMARY_COLUMNS:
            value = m.get(key)
            ok = isinstance(value, (int, float)) and np.isfinite(value)
            cells.append(fmt.format(int(value) if fmt == "{:d}" else value) if ok else "-")
        table.add_row(*cells)
    # a log file or a pipe: no terminal width to fit, and rich would cut every column to "0.6…"
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def phase_line(metrics: dict) -> str:
    """The round's phases (busy seconds, in the serial order) and its wall time: the one-screen view of a round."""
    phases = [k for k in metrics if k.startswith("timing/") and k != "timing/round"]
    line = "  ".join(f"{k[7:]} {metrics[k]:.1f}s" for k in phases)
    return line + (f"  | round wall {metrics['timing/round']:.1f}s" if "timing/round" in metrics else "")


def plot_rounds(history: list[dict], path: Path) -> Path | None:
    if not history:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [m["round"] for m in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("pass_rate", "pass rate (outcome reward)"), ("eval/pass", "pass rate, held-out problems"),
                       ("reward/process", "process reward (PRM)"),
                       ("prm/heldout_auroc", "PRM step AUROC, held-out set"),
                       ("prm/heldout_f1", "PRM first-error F1, held-out set")):
        points = [(m["round"], m[key]) for m in history if key in m]   # eval/pass: only where evaluated
        if points:
            ax1.plot(*zip(*points), marker="o", label=label)
    ax1.set_xlabel("round"), ax1.set_ylabel("reward"), ax1.legend(), ax1.grid(alpha=.3)
    ax2.bar(rounds, [m.get("judge/calls", 0) for m in history], color="tab:red", alpha=.7, label="judge calls")
    ax2.plot(rounds, [m.get("select/candidates", 0) for m in history], color="k", ls="--", label="trajectories")
    ax2.set_xlabel("round"), ax2.set_ylabel("count"), ax2.legend(), ax2.grid(alpha=.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
