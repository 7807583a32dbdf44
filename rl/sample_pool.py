"""`python -m rl.search job=pool`: an unlabelled PRM pool from the search policy's own samples.

The PRM that guides search should have seen the policy's own steps. This samples `pool.n` solutions per
problem with the policy, prompt, step split and sampling settings `rl.search` uses, skipping problems of
a held-out slice (`pool.exclude_*`, default: the search evaluation slice, test problems 0-19), and writes
prmloop JSONL trajectories without labels; meta.correct keeps whether the final answer verified. Then
`python -m prm.train pool=jsonl pool.path=outputs/search/arithmetic/pool.jsonl judge=rule` (or
judge=rule_outcome) labels and trains.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from core.answers import AnswerChecker
from core.config import check_ranges
from tasks.problems import Trajectory
from core.steps import split_steps
from rl.search_select import Solution, attach_answer
from rl.search_policy import RolloutPolicy, load_task, make_backend, seed_run


@dataclass
class PoolSampleConfig:
    out: str | None = None                   # the JSONL to write (None: <trainer.out_dir>/pool.jsonl)
    n: int = 8                               # samples per problem
    seed: int = 0                            # sampling seed
    exclude_offset: int = 0                  # the held-out slice (test split) whose questions are skipped
    exclude_limit: int = 20
    exclude_seed: int = 0                    # arithmetic: the held-out slice's generator seed

    def __post_init__(self):
        check_ranges(self, "pool.", n=">= 1", exclude_offset=">= 0", exclude_limit=">= 0")


def write_pool(cfg) -> Path:
    p = cfg.pool
    problems, task = load_task(cfg.task, cfg.data_root)
    held_task = replace(cfg.task, offset=p.exclude_offset, limit=p.exclude_limit, split="test", seed=p.exclude_seed)
    held = {q.question for q in load_task(held_task, cfg.data_root)[0]}
    kept = [q for q in problems if q.question not in held]
    print(f"[pool] {len(kept)} problems ({len(problems) - len(kept)} overlap the held-out slice and are skipped), "
          f"{p.n} samples each", flush=True)
    backend, tok = make_backend(cfg.policy, cfg.rollout, p.seed)
    seed_run(p.seed, "pool", p.n)
    start = time.perf_counter()
    groups = RolloutPolicy(backend, cfg.rollout)([task.prompt(tok, q.question) for q in kept], p.n, one_step=False)
    seconds = time.perf_counter() - start
    getattr(backend, "close", lambda: None)()
    samples = [(q, k, attach_answer(Solution(split_steps(c.text), c.n_tokens), cfg.task.fallback_last_number))
               for q, group in zip(kept, groups) for k, c in enumerate(group)]
    samples = [(q, k, sol) for q, k, sol in samples if sol.steps]
    checker = AnswerChecker()
    try:   # the final answer's correctness is kept for rule_outcome and analysis; the PRM learns from judge labels
        correct = checker.check_many([q.reference_answer for q, _, _ in samples], [s.answer for _, _, s in samples])
    finally:
        checker.close()
    out = Path(p.out or Path(cfg.trainer.out_dir) / "pool.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for (q, k, sol), ok in zip(samples, correct):
            traj = Trajectory(q.question, sol.steps, None, q.reference_answer, f"{q.source}#{k}",
                              generator=cfg.policy.model, meta={"answer": sol.answer, "correct": bool(ok)})
            fh.write(json.dumps(traj.to_json()) + "\n")
    tokens = sum(s.n_tokens for _, _, s in samples)
    print(f"[pool] wrote {len(samples)} trajectories to {out} ({sum(s.answer is not None for _, _, s in samples)} "
          f"with an answer, {sum(map(bool, correct))} correct); {tokens} tokens in {seconds:.0f} s", flush=True)
    return out
