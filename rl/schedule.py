"""Round schedules: the order in which OnlineLoop's four halves run (setting `schedule`).

serial    begin(k) -> rank(k) -> learn_prm(k) -> learn_policy(k), round after round.
overlap   learn_prm(k) (judge -> prm_update) runs in a worker thread while the foreground goes on with
          learn_policy(k) (advantage, policy update, weight sync) and begin(k+1) (generate, verify); it is
          joined before rank(k+1) scores with the PRM. Valid only where the policy's rewards do not wait
          for this round's PRM update: prm_update=pre_update_rewards (rewards from the scores taken before
          it) or none; with post_update_rewards, several processes (their collectives must keep one
          order) or a ZeRO-3 PRM (prm.zero_stage=3), the schedule is serial. It changes time, not results: the worker touches only the judge, the ledger
          and the PRM (whose only other user, rank, waits for it) and draws on no global RNG stream, so
          labels, PRM weights and policy updates equal the serial schedule's (tests/test_schedule.py).
Timing    timing/<phase> is each phase's busy time, whichever thread ran it. timing/round is the round's
          wall time on the foreground: its own foreground phases plus timing/wait_prm, the time the
          foreground stood waiting for this round's back half (spent just before rank(k+1), charged to
          round k). Summed over rounds, timing/round is the run's wall time; in the overlap schedule
          the busy times add up to more than that, by the time the back half was hidden.
State     a finished round carries the data position and RNG state of the moment its foreground ended
          (before begin(k+1) drew the next problems and samples): its checkpoint resumes exactly.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

from rl.checkpoint import rng_state

SCHEDULES = ("overlap", "serial")


@dataclass
class FinishedRound:
    index: int
    metrics: dict
    stds: list[float]
    data_position: int           # stream position and RNG state at the end of the round's foreground
    rng: dict


def effective_schedule(cfg) -> str:
    """cfg.schedule where it is valid, else serial (see the module docstring)."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule={cfg.schedule!r} is not one of {SCHEDULES}")
    single_process = int(os.environ.get("WORLD_SIZE", "1")) == 1
    # a ZeRO-3 PRM gathers and frees its partitioned weights inside each forward: not from two threads
    prm_zero3 = cfg.trainer.deepspeed and cfg.prm.zero_stage == 3
    if cfg.schedule == "overlap" and cfg.prm_update in ("pre_update_rewards", "none") and single_process \
            and not prm_zero3:
        return "overlap"
    return "serial"


def run_rounds(loop, indices: Iterable[int], schedule: str) -> Iterator[FinishedRound]:
    """Run the rounds; yield each as it finishes (its back half joined, nothing of it still running)."""
    if schedule == "serial":
        for index in indices:
            start = time.perf_counter()
            work = loop.round(index)
            yield _finished(loop, work, time.perf_counter() - start, loop.stream.position, rng_state())
        return
    # one worker: round k's back half always ends before round k+1's starts (it is joined in between)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prm-back") as worker:
        pending: tuple | None = None
        for index in indices:
            start = time.perf_counter()
            work = loop.begin(index)
            foreground = time.perf_counter() - start
            if pending is not None:
                yield _join(loop, *pending)
            start = time.perf_counter()
            loop.rank(work)
            back = worker.submit(loop.learn_prm, work)
            loop.learn_policy(work)
            pending = (work, back, foreground + time.perf_counter() - start, loop.stream.position, rng_state())
        if pending is not None:
            yield _join(loop, *pending)


def _join(loop, work, back: Future, foreground: float, data_position: int, rng: dict) -> FinishedRound:
    start = time.perf_counter()
    back.result()  # re-raises the back half's exception here, in the foreground
    wait = time.perf_counter() - start
    work.timer.seconds["timing/wait_prm"] = wait
    return _finished(loop, work, foreground + wait, data_position, rng)


def _finished(loop, work, wall: float, data_position: int, rng: dict) -> FinishedRound:
    metrics, stds = loop.report(work, wall)
    return FinishedRound(work.index, metrics, stds, data_position, rng)
