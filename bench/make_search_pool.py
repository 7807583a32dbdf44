"""An in-domain, unlabelled PRM pool from the search policy's own samples (bench/RESULTS.md, search).

The PRM that guides search should have seen the policy's own steps. This samples `--n` solutions per
problem from the same policy, prompt, step split and sampling settings that `python -m rl.search` uses,
on problems disjoint from the search evaluation slice, and writes them as prmloop JSONL trajectories
(no labels). `python -m prm.train pool=jsonl pool.path=<out> judge=rule` then trains the ensemble PRM on
them in the standalone active mode, the judge labelling only what the PRM is unsure about.

    python bench/make_search_pool.py --out outputs/pools/arithmetic.jsonl --n 8 -- \
        task=arithmetic task.seed=1 task.limit=200 task.num_ops=2 rollout.max_new_tokens=160
    python bench/make_search_pool.py --out outputs/pools/gsm8k.jsonl --n 4 -- \
        task=gsm8k task.split=train task.limit=150 rollout.max_new_tokens=320

Overrides after `--` are `rl.search` config keys (configs/search.yaml). Problems whose question also
appears in the held-out slice (`--exclude-*`, default: the search benchmark's) are skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from prm.answers import AnswerChecker
from prm.config import validate
from prm.data import Trajectory
from prm.steps import split_steps
from rl.rollout import exit_on_sigterm
from rl.search import RolloutPolicy, SearchConfig, _seed_everything, load_task, make_backend
from rl.search_methods import attach_answer, Solution


def held_out_questions(cfg: SearchConfig, exclude_offset: int, exclude_limit: int, exclude_seed: int) -> set[str]:
    held = dataclasses.replace(cfg.task, offset=exclude_offset, limit=exclude_limit, split="test", seed=exclude_seed)
    return {p.question for p in load_task(held)[0]}


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSONL pool to write")
    parser.add_argument("--n", type=int, default=8, help="samples per problem")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--exclude-offset", type=int, default=0)
    parser.add_argument("--exclude-limit", type=int, default=20)
    parser.add_argument("--exclude-seed", type=int, default=0, help="arithmetic: the held-out slice's generator seed")
    parser.add_argument("overrides", nargs="*", help="rl.search config overrides")
    args = parser.parse_args()

    with initialize_config_module("configs", version_base=None):
        raw = compose("search", overrides=["method=[]", *args.overrides])
    cfg = validate(OmegaConf.to_container(raw, resolve=True), SearchConfig)
    problems, task = load_task(cfg.task)
    held = held_out_questions(cfg, args.exclude_offset, args.exclude_limit, args.exclude_seed)
    kept = [p for p in problems if p.question not in held]
    print(f"[pool] {len(kept)} problems ({len(problems) - len(kept)} overlap the held-out slice and are skipped), "
          f"{args.n} samples each", flush=True)

    backend, tok = make_backend(cfg.policy, cfg.rollout, args.seed)
    _seed_everything(args.seed, "pool", args.n)
    policy = RolloutPolicy(backend, cfg.rollout)
    start = time.perf_counter()
    groups = policy([task.prompt(tok, p.question) for p in kept], args.n, one_step=False)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples = [(prob, k, attach_answer(Solution(split_steps(c.text), c.n_tokens), cfg.task.fallback_last_number))
               for prob, group in zip(kept, groups) for k, c in enumerate(group)]
    samples = [(prob, k, sol) for prob, k, sol in samples if sol.steps]
    checker = AnswerChecker()
    try:   # the final answer's correctness is kept for analysis only: the PRM learns from judge labels
        correct = checker.check_many([p.reference_answer for p, _, _ in samples], [s.answer for _, _, s in samples])
    finally:
        checker.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for (prob, k, sol), ok in zip(samples, correct):
            traj = Trajectory(prob.question, sol.steps, None, prob.reference_answer, f"{prob.source}#{k}",
                              generator=cfg.policy.model, meta={"answer": sol.answer, "correct": bool(ok)})
            fh.write(json.dumps(traj.to_json()) + "\n")
    rows, tokens = len(samples), sum(s.n_tokens for _, _, s in samples)
    answered, right = sum(s.answer is not None for _, _, s in samples), sum(map(bool, correct))
    print(f"[pool] wrote {rows} trajectories to {out} ({answered} with an answer, {right} correct); {tokens} tokens in "
          f"{seconds:.0f} s ({tokens / max(seconds, 1e-9):.0f} tokens/s)", flush=True)
    close = getattr(backend, "close", None)
    if close:
        close()


if __name__ == "__main__":
    main()
