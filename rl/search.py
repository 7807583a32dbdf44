"""`python -m rl.search`: reward-guided search evaluation (DESIGN.md section 5).

One invocation loads the policy (HF or vLLM backend) and the PRM once, then for every seed and every
selected method (config group `method`, one or several: `method=[greedy,best_of_n,beam,dvts]`) runs
the search over all problems at once and writes, under `out_dir`:
  records/<method>-n<N>-beta<B>-seed<S>.jsonl   one line per problem: solutions with step scores,
                                                the chosen answer per selector and n, correct, cost
  summary.md, search.png                       accuracy vs n (and vs generated tokens) per method,
                                                rebuilt from every record file in out_dir
A killed or extended run resumes: a record file that is complete and was written under the same
settings (run_stamp) is kept, not recomputed (`resume=false` recomputes everything). On the HF backend
every run is seeded on its own, so the kept and the new records equal an uninterrupted run's.
Best-of-N samples max(ns) once per seed; every n' <= max(ns) (powers of two, and max(ns)) is read off
its first n' samples. Beam search and DVTS run once per n in ns (n >= 2) and per beta in scorer.betas;
best-of-N applies every beta to the same samples, at no extra cost.

    python -m rl.search dataset.name=arithmetic 'method=[greedy,best_of_n,beam,dvts]' prm.path=outputs/prm
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from prm.answers import AnswerChecker
from prm.config import PRMConfig, validate
from prm.data import Problem
from rl.search_methods import (METHODS, SCORE_FREE_SELECTORS, SELECTORS, Continuation, ScoreSpec,
                               SearchOutcome, SearchProblem, SearchSettings, prefix_cost)

STEP_STOP = "\n\n"


@dataclass
class PolicyConfig:
    model: str = "smollm2-135m-instruct"      # prm.models name, a local dir or an HF id
    backend: str = "vllm"                     # rl.rollout registry: hf | vllm
    dtype: str = "bf16"
    device: str = "cpu"                       # HF backend: where the policy runs (cpu | cuda)
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 384                 # a whole solution (best-of-N, greedy, last search round)
    step_max_new_tokens: int = 128            # one step (beam, dvts)
    system_prompt: str | None = None          # None: the task's own (rl.tasks)
    batch_size: int = 64                      # HF backend micro-batch
    backend_options: dict = field(default_factory=dict)   # passed to the backend (e.g. vLLM memory share)


@dataclass
class MethodConfig:
    beam_width: int = 4                       # M (beam, dvts); min(M, n) is used
    max_iterations: int = 10                  # step rounds (beam, dvts)
    selectors: list[str] = field(default_factory=lambda: ["vanilla", "weighted", "majority"])
    ns: list[int] | None = None               # beam, dvts: the n to run (None: the top-level ns)
    filter_duplicates: bool = False           # beam: drop unfinished beams repeating an earlier one (search-and-learn)
    sort_completed: bool = False              # beam: keep the n best finished beams, not the first n (search-and-learn)


@dataclass
class DatasetConfig:
    name: str = "arithmetic"                  # rl.tasks registry: arithmetic | gsm8k | math500
    split: str = "test"
    offset: int = 0                           # problems [offset, offset + limit)
    limit: int | None = 20
    data_root: str | None = None
    seed: int = 0                             # arithmetic: generator seed and difficulty
    num_ops: int = 2
    operand_max: int = 10
    ops: str = "+-*"
    mul_max: int = 10


@dataclass
class ScorerConfig:
    aggregate: str = "last"                   # last | min | prod over a solution's step scores
    betas: list[float] = field(default_factory=lambda: [0.0, 1.0])  # step value = mean - beta * std
    # beam / DVTS: keep each scored prefix's PRM keys/values (up to this many GiB) so a child runs only
    # its new step through the backbone (prm.prefix_cache); same scores, 0 = full passes
    prefix_cache_gb: float = 4.0


@dataclass
class SearchConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)     # prm.path: a dir saved by `python -m prm.train`
    method: dict[str, MethodConfig] = field(default_factory=dict)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    out_dir: str = "outputs/search"
    fallback_last_number: bool = False        # answers only from "The answer is"/\boxed{} unless True
    plot: bool = True
    progress: bool = True                     # a tqdm bar per run (generation rounds)
    resume: bool = True                       # skip a (method, n, beta, seed) run whose record file is complete


# The schema is the base of configs/search.yaml (its defaults list starts with it), so every key of
# SearchConfig can be overridden on the command line and a misspelt one fails at composition.
ConfigStore.instance().store(name="search_schema", node=SearchConfig)


# ---------------------------------------------------------------- problems
def load_task(cfg: DatasetConfig, system_prompt: str | None):
    """The online loop's task registry (rl.tasks): problems [offset, offset + limit) and the task's
    own system prompt unless policy.system_prompt overrides it."""
    from types import SimpleNamespace

    from rl.tasks import make_task

    end = None if cfg.limit is None else cfg.offset + cfg.limit
    fields = {**asdict(cfg), "size": end or 1000, "limit": end, "system_prompt": system_prompt}
    task = make_task(SimpleNamespace(**fields))
    return task.problems[cfg.offset:end], task.system_prompt


# ---------------------------------------------------------------- policy + PRM adapters
class RolloutPolicy:
    """An rl.rollout backend as the search methods' Policy. In one-step mode generation stops at the
    first blank line; the backend keeps the stop string in the text, which is how step_end is read."""

    def __init__(self, backend, cfg: PolicyConfig):
        self.backend, self.cfg = backend, cfg
        self.seconds = 0.0
        self.bar = None      # a progress bar per run (run_method): one tick per generation round

    def __call__(self, contexts: list[str], n: int, one_step: bool, greedy: bool = False
                 ) -> list[list[Continuation]]:
        start = time.perf_counter()
        groups = self.backend.generate(
            contexts, n, self.cfg.step_max_new_tokens if one_step else self.cfg.max_new_tokens,
            temperature=0.0 if greedy else self.cfg.temperature, top_p=self.cfg.top_p,
            stop=[STEP_STOP] if one_step else None)
        self.seconds += time.perf_counter() - start
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(policy_s=f"{self.seconds:.0f}", refresh=False)
        return [[self._continuation(c, one_step) for c in group] for group in groups]

    @staticmethod
    def _continuation(c, one_step: bool) -> Continuation:
        """In one-step mode only EOS ends the solution: a step cut by step_max_new_tokens is a (long)
        step, not an unanswered final one (treating it as final retired many beams without an answer)."""
        if not one_step:
            return Continuation(c.text, len(c.token_ids), step_end=False)
        cut = c.text.find(STEP_STOP)
        if cut >= 0:
            return Continuation(c.text[:cut], len(c.token_ids), step_end=True)
        return Continuation(c.text, len(c.token_ids), step_end=c.finish_reason == "length")


class TimedScorer:
    """The PRM as the methods' score function, timed. Step-wise methods score with a prefix cache
    that lives for one run (start_run)."""

    def __init__(self, prm, prefix_cache_gb: float = 0.0):
        self.prm, self.prefix_cache_gb, self.seconds = prm, prefix_cache_gb, 0.0
        self.score = prm.score

    def start_run(self, step_wise: bool) -> None:
        from prm.prefix_cache import PrefixCachedScorer

        self.seconds = 0.0
        cached = step_wise and self.prefix_cache_gb > 0
        self.score = PrefixCachedScorer(self.prm, max_bytes=self.prefix_cache_gb * 2**30) if cached else self.prm.score

    def __call__(self, questions, steps_list):
        start = time.perf_counter()
        out = self.score(questions, steps_list)
        self.seconds += time.perf_counter() - start
        return out


def load_prm(cfg: PRMConfig):
    from prm.model import EnsemblePRM

    # prm.path: the saved model, placed on prm.device, with this run's settings (EnsemblePRM.from_config)
    return EnsemblePRM.from_config(cfg)


def make_backend(cfg: PolicyConfig, seed: int):
    from prm.models import load_model, resolve_path
    from rl.rollout import make_rollout

    model, tok = load_model(cfg.model, cfg.dtype)
    model.to(cfg.device).eval()
    model_dir = None if cfg.backend == "hf" else resolve_path(cfg.model)
    return make_rollout(cfg.backend, model=model, tokenizer=tok, model_dir=model_dir, seed=seed,
                        batch_size=cfg.batch_size, dtype=cfg.dtype, **cfg.backend_options), tok


# ---------------------------------------------------------------- evaluation
def bon_sizes(n: int) -> list[int]:
    """n' = 1, 2, 4, ... <= n, plus n itself."""
    sizes = [1 << k for k in range(n.bit_length()) if 1 << k <= n]
    return sizes + ([n] if sizes[-1] != n else [])


def label(method: str, selector: str, beta: float) -> str:
    return f"{method}/{selector}" + (f" (mean-{beta:g}std)" if beta else "")


def choices(method: str, outcome: SearchOutcome, n: int, selectors: list[str], specs: list[ScoreSpec]
            ) -> list[dict]:
    """Every (n', selector, beta) answer this outcome yields, with the compute it took."""
    if method == "greedy":
        sol = outcome.solutions[0]
        return [{"label": "greedy", "n": 1, "answer": sol.answer, "cost": asdict(outcome.cost)}]
    rows = []
    prefixes = bon_sizes(n) if method == "best_of_n" else [n]
    for size in prefixes:
        sols = outcome.solutions[:size] if method == "best_of_n" else outcome.solutions
        cost = prefix_cost(sols) if method == "best_of_n" else outcome.cost
        for selector in selectors:
            for spec in specs[:1] if selector in SCORE_FREE_SELECTORS and method == "best_of_n" else specs:
                pick = SELECTORS[selector](sols, spec)
                rows.append({"label": label(method, selector, spec.beta), "n": size,
                             "answer": None if pick is None else sols[pick].answer, "cost": asdict(cost)})
    return rows


def run_method(method: str, mcfg: MethodConfig, problems: list[Problem], sproblems: list[SearchProblem],
               policy: RolloutPolicy, scorer: TimedScorer, cfg: SearchConfig, seed: int,
               checker: AnswerChecker, out_dir: Path) -> None:
    """All runs of one method for one seed: writes one record file per (n, beta) run."""
    unknown = set(mcfg.selectors) - set(SELECTORS)
    if unknown:
        raise KeyError(f"selectors {sorted(unknown)} unknown; registered: {sorted(SELECTORS)}")
    betas = list(cfg.scorer.betas)
    step_wise = method in ("beam", "dvts")                   # one PRM call per generation round
    if method == "greedy":
        runs = [(1, [0.0])]
    elif method == "best_of_n":
        runs = [(max(cfg.ns), betas)]                        # every beta from the same samples
    else:
        runs = [(n, [b]) for n in sorted(set(mcfg.ns or cfg.ns)) if n >= 2 for b in betas]
    for n, run_betas in runs:
        name = f"{method}-n{n}-beta{run_betas[0]:g}-seed{seed}" if step_wise else f"{method}-n{n}-seed{seed}"
        path = out_dir / "records" / f"{name}.jsonl"
        stamp = run_stamp(cfg, mcfg, run_betas)
        if cfg.resume and _complete(path, stamp, len(problems)):
            print(f"[search] seed {seed} {method} n={n}: done before, record kept ({path.name})", flush=True)
            continue
        specs = [ScoreSpec(cfg.scorer.aggregate, b) for b in run_betas]
        settings = SearchSettings(n=n, beam_width=mcfg.beam_width, max_iterations=mcfg.max_iterations,
                                  spec=specs[0], fallback_last_number=cfg.fallback_last_number,
                                  filter_duplicates=mcfg.filter_duplicates, sort_completed=mcfg.sort_completed)
        _seed_everything(seed, method, n)
        policy.seconds = 0.0
        scorer.start_run(step_wise)
        start = time.perf_counter()
        # step-wise search can run for many minutes on a CPU: show each generation round as it ends
        rounds = mcfg.max_iterations + 1 if step_wise else 1
        with tqdm(total=rounds, desc=f"seed {seed} {method} n={n}", unit="round", disable=not cfg.progress,
                  dynamic_ncols=True, leave=False) as policy.bar:
            outcomes = METHODS[method](sproblems, policy, scorer, settings)
        policy.bar = None
        seconds = {"total": time.perf_counter() - start, "policy": policy.seconds, "prm": scorer.seconds}
        per_problem = [choices(method, o, n, mcfg.selectors, specs) for o in outcomes]
        flat = [(p, row) for p, rows in zip(problems, per_problem) for row in rows]
        verdicts = checker.verify_many([p.reference_answer for p, _ in flat], [r["answer"] for _, r in flat])
        for (_, row), verdict in zip(flat, verdicts):
            row["correct"] = verdict == "correct"
            if verdict == "unverified":  # math-verify timed out: not counted correct, but said so
                row["unverified"] = True
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            for prob, outcome, rows in zip(problems, outcomes, per_problem):
                fh.write(json.dumps({**record(prob, outcome, rows, method, n, run_betas, seed, cfg, seconds),
                                     "stamp": stamp}) + "\n")
        tmp.replace(path)   # atomic: a killed run leaves no half-written record that looks complete
        acc = {r["label"]: 0 for r in per_problem[0] if r["n"] == n}
        for rows in per_problem:
            for r in rows:
                if r["n"] == n:
                    acc[r["label"]] += r["correct"]
        tokens = sum(o.cost.generated_tokens for o in outcomes) / len(outcomes)
        unverified = f"; unverified answers: {verdicts.count('unverified')}" if "unverified" in verdicts else ""
        print(f"[search] seed {seed} {method} n={n}: {seconds['total']:.0f}s (policy {seconds['policy']:.0f}s, "
              f"prm {seconds['prm']:.0f}s), {tokens:.0f} tokens/problem; correct/{len(problems)}: "
              + ", ".join(f"{k} {v}" for k, v in acc.items())
              + unverified, flush=True)


def record(prob: Problem, outcome: SearchOutcome, rows: list[dict], method: str, n: int, betas: list[float],
           seed: int, cfg: SearchConfig, seconds: dict) -> dict:
    return {
        "source": prob.source, "question": prob.question, "reference": prob.reference_answer,
        "method": method, "n": n, "betas": betas, "aggregate": cfg.scorer.aggregate, "seed": seed,
        "solutions": [{"text": s.text, "answer": s.answer, "mean": s.mean, "std": s.std, "tokens": s.n_tokens}
                      for s in outcome.solutions],
        "trace": outcome.trace, "cost": asdict(outcome.cost), "results": rows,
        "batch_seconds": seconds,   # wall time of the whole batch of problems, not of this one
    }


def run_stamp(cfg: SearchConfig, mcfg: MethodConfig, betas: list[float]) -> str:
    """What a run's result depends on besides (method, n, seed): policy, PRM, problems, scoring and the
    method's settings. A record is reused on resume only under the same stamp."""
    key = {"policy": asdict(cfg.policy), "prm": asdict(cfg.prm), "dataset": asdict(cfg.dataset),
           "aggregate": cfg.scorer.aggregate, "betas": betas, "method": asdict(mcfg),
           "fallback_last_number": cfg.fallback_last_number}
    for volatile in ("batch_size", "device", "backend_options"):   # placement and batching, not results
        key["policy"].pop(volatile, None)
        key["prm"].pop(volatile, None)
    key["method"].pop("ns", None)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _complete(path: Path, stamp: str, problems: int) -> bool:
    if not path.is_file():
        return False
    lines = path.read_text().splitlines()
    return len(lines) == problems and all(json.loads(line).get("stamp") == stamp for line in lines)


def _seed_everything(seed: int, method: str, n: int) -> None:
    # Per (seed, method, n), so a run's samples do not depend on which methods ran before it (HF backend;
    # the vLLM engine is seeded once per seed at start-up, see make_backend).
    mixed = seed * 1_000_003 + sum(map(ord, method)) * 1009 + n
    random.seed(mixed)
    torch.manual_seed(mixed)


def search(cfg: SearchConfig) -> Path:
    from rl.search_report import write_report

    if not cfg.method:
        raise ValueError("no method selected: pass e.g. 'method=[greedy,best_of_n,beam,dvts]'")
    unknown = set(cfg.method) - set(METHODS)
    if unknown:
        raise KeyError(f"methods {sorted(unknown)} unknown; registered: {sorted(METHODS)}")
    ScoreSpec(cfg.scorer.aggregate)   # fail on a bad aggregate before loading anything
    out_dir = Path(cfg.out_dir)
    problems, system_prompt = load_task(cfg.dataset, cfg.policy.system_prompt)
    prm = load_prm(cfg.prm)
    scorer = TimedScorer(prm, cfg.scorer.prefix_cache_gb)
    checker = AnswerChecker()
    order = [m for m in METHODS if m in cfg.method]          # registry order: greedy first
    try:
        for seed in cfg.seeds:
            backend, tok = make_backend(cfg.policy, seed)
            policy = RolloutPolicy(backend, cfg.policy)
            sproblems = [SearchProblem(p.question, _prompt(tok, p.question, system_prompt),
                                       p.reference_answer, p.source) for p in problems]
            for method in order:
                run_method(method, cfg.method[method], problems, sproblems, policy, scorer, cfg, seed,
                           checker, out_dir)
            close = getattr(backend, "close", None)
            if close:
                close()
            del backend
    finally:
        checker.close()
    report = write_report(out_dir, plot=cfg.plot, title=f"{cfg.dataset.name} ({len(problems)} problems)")
    print(report.read_text())
    return out_dir


def _prompt(tok, question: str, system_prompt: str | None) -> str:
    from rl.rollout import format_prompt

    return format_prompt(tok, question, system_prompt)


@hydra.main(config_path="pkg://configs", config_name="search", version_base=None)
def main(cfg: DictConfig) -> None:
    from rl.rollout import exit_on_sigterm

    exit_on_sigterm()   # a killed run shuts its vLLM engine down; complete records are kept (resume)
    # A plain container: a key force-added on the command line ('+policy.x=1') must fail too.
    search(validate(OmegaConf.to_container(cfg, resolve=True), SearchConfig))


if __name__ == "__main__":   # the guard matters: the vLLM engine starts worker processes with spawn
    main()
