"""`python -m rl.online` with a probe, for the data-parallel tests (run under torchrun by
tests/test_rl_distributed.py; takes the same hydra overrides as the command).

After every round each rank writes $PROBE_DIR/rank{r}_round{i}.json: the questions it generated for
(one entry per completion), its policy and PRM weight digests and the round's metrics; rank 0 also
saves the flat policy weights and PRM heads ($PROBE_DIR/weights_round{i}.pt) for cross-run comparison,
every rank its own copy ($PROBE_DIR/weights_rank{r}_round{i}.pt); ZeRO-3 weights are gathered first.
Faults on request (env):
    PROBE_STARVE_RANK=r   rank r keeps no sample for the policy and no label in round 1
    PROBE_HANG_ROUND=i    in round i, after judging, touch $PROBE_DIR/hung_rank{r} and sleep (the test kill -9s it)
Each rank writes its pid to $PROBE_DIR/pid_rank{r}: torchrun starts every worker in a session of its
own, so killing the launcher's process group misses them (kill_run in the tests kills both).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from rl import online
from core.distributed import Ranks, accept_local_rank_argument
from rl.loop import OnlineLoop

OUT = Path(os.environ["PROBE_DIR"])
STARVE = int(os.environ.get("PROBE_STARVE_RANK", "-1"))
HANG = int(os.environ.get("PROBE_HANG_ROUND", "0"))
RANK = Ranks.from_env().rank


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().float().reshape(-1) for t in tensors])


original_begin, original_report = OnlineLoop.begin, OnlineLoop.report
original_judge, original_advantages = OnlineLoop.judge_selected, OnlineLoop.advantages
seen: dict[int, list[str]] = {}


def generate(self, problems, index=0, first=0):
    rollouts = original_generate(self, problems, index, first)
    seen[index] = [r.question for r in rollouts]
    return rollouts


def judge_selected(self, rollouts, chosen):
    index = self._probe_round
    if RANK == STARVE and index == 1:
        chosen = [False] * len(chosen)
    out = original_judge(self, rollouts, chosen)
    if index == HANG:
        (OUT / f"hung_rank{RANK}").write_text(str(RANK))
        time.sleep(3600)
    return out


def advantages(self, rollouts, index):
    samples, metrics = original_advantages(self, rollouts, index)
    return ([] if RANK == STARVE and self._probe_round == 1 else samples), metrics


def begin(self, index):
    self._probe_round = index   # the tests run schedule=serial: a round's halves run in order
    return original_begin(self, index)


def report(self, work, wall=None):
    index = work.index
    metrics, stds = original_report(self, work, wall)
    policy = [p for _, p in sorted(self.policy.module.named_parameters())]
    heads = [p for _, p in sorted(self.learner.prm.heads.named_parameters())] if self.learner else []
    with gathered(policy + heads):   # ZeRO-3: the full tensors (a collective: every rank reports)
        record = {"questions": seen[index], "policy": digest(policy), "prm": digest(heads), "metrics": metrics,
                  "prm_partitioned": any(hasattr(p, "ds_id") for p in heads)}
        weights = {"policy": flat(policy), "prm": flat(heads) if heads else None}
    (OUT / f"rank{RANK}_round{index}.json").write_text(json.dumps(record))
    torch.save(weights, OUT / f"weights_rank{RANK}_round{index}.pt")
    if RANK == 0:
        torch.save(weights, OUT / f"weights_round{index}.pt")
    return metrics, stds


def gathered(params):
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters([p for p in params if hasattr(p, "ds_id")])


original_generate = OnlineLoop.generate
OnlineLoop.generate, OnlineLoop.judge_selected, OnlineLoop.advantages = generate, judge_selected, advantages
OnlineLoop.begin, OnlineLoop.report = begin, report

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"pid_rank{RANK}").write_text(str(os.getpid()))
    accept_local_rank_argument()
    online.main()
