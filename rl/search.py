"""`python -m rl.search`: reward-guided search evaluation (docs/method.md, Search).

One invocation loads the policy (HF or vLLM backend) and the PRM once, then for every seed and every
selected method (config group `method`, one or several: `method=[greedy,best_of_n,beam,dvts]`) runs
the search over all problems at once and writes, under `trainer.out_dir`:
  records/<method>-n<N>-beta<B>-seed<S>.jsonl   one line per problem: solutions with step scores,
                                                the chosen answer per selector and n, correct, cost
                                                (tokens, passes, and the token positions the policy's
                                                and the scorer's backbones ran: docs/search.md, Compute)
  summary.md, search.png                       accuracy vs n (and vs generated tokens) per method,
                                                rebuilt from every record file in trainer.out_dir
A killed or extended run resumes: a record file that is complete and was written under the same
settings (run_stamp) is kept, not recomputed (`trainer.resume=never` recomputes everything). On the HF backend
every run is seeded on its own, so the kept and the new records equal an uninterrupted run's.
Best-of-N samples max(ns) once per seed; every n' <= max(ns) (powers of two, and max(ns)) is read off
its first n' samples. Beam search and DVTS run once per n in ns (n >= 2) and per beta in scorer.betas;
best-of-N applies every beta to the same samples, at no extra cost.

    python -m rl.search task=arithmetic 'method=[greedy,best_of_n,beam,dvts]' prm.path=outputs/prm
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from core.answers import AnswerChecker
from core.config import ConfigError, OutDirConfig, check_ranges, resolve_device, validate
from prm.config import PRMConfig
from tasks.problems import Problem
from rl.config import PolicyConfig, RolloutBackendName, RolloutConfig, TaskConfig
from rl.sample_pool import PoolSampleConfig, write_pool
from rl.search_methods import METHODS, SearchOutcome, SearchProblem, SearchSettings, prefix_cost
from rl.search_select import SCORE_FREE_SELECTORS, SELECTORS, ScoreSpec
from rl.search_policy import RolloutPolicy, load_task, make_backend, seed_run


@dataclass
class MethodConfig:
    beam_width: int = 4                       # M (beam, dvts); min(M, n) is used
    max_iterations: int = 10                  # step rounds (beam, dvts)
    selectors: list[str] = field(default_factory=lambda: ["vanilla", "weighted", "majority"])
    ns: list[int] | None = None               # beam, dvts: the n to run (None: the top-level ns)
    filter_duplicates: bool = False           # beam: drop unfinished beams repeating an earlier one (search-and-learn)
    sort_completed: bool = False              # beam: keep the n best finished beams, not the first n (search-and-learn)


class ScorerSource(StrEnum):
    """What scores the steps: the PRM, or the policy's own confidence (prm.confidence, the free baseline)."""
    prm = "prm"
    confidence_min = "confidence_min"      # exp(min token log-prob of the step)
    confidence_mean = "confidence_mean"    # exp(mean token log-prob of the step)


@dataclass
class ScorerConfig:
    source: ScorerSource = ScorerSource.prm   # prm | confidence_min | confidence_mean (the policy's own, no labels)
    aggregate: str = "last"                   # last | min | prod over a solution's step scores
    betas: list[float] = field(default_factory=lambda: [0.0, 1.0])  # step value = mean - beta * std
    # beam / DVTS: keep each scored prefix's PRM keys/values (up to this many GiB) so a child runs only
    # its new step through the backbone (prm.prefix_cache); same scores, 0 = full passes
    prefix_cache_gb: float = 4.0

    def __post_init__(self):
        check_ranges(self, "scorer.", prefix_cache_gb=">= 0")


class SearchJob(StrEnum):
    search = "search"    # the selected methods over the task, records and a report
    pool = "pool"        # an unlabelled PRM pool from the policy's own samples (rl.sample_pool)


@dataclass
class SearchTrainerConfig(OutDirConfig):
    """rl.search's `trainer` node: the output dir and resume, spelt as in rl.online and prm.train."""
    out_dir: str = "outputs/search"
    resume: str = "auto"                      # auto: keep a (method, n, beta, seed) record file that is complete; never

    def __post_init__(self):
        if self.resume not in ("auto", "never"):
            raise ConfigError(f"trainer.resume must be auto or never for rl.search, got {self.resume!r}")


@dataclass
class SearchConfig:
    # the component groups of rl.online: the policy (model, dtype), how it generates (rollout), the task
    # (the same problems, prompts and few-shot turns; search's defaults: the test split, 20 problems)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(backend=RolloutBackendName.vllm))
    task: TaskConfig = field(default_factory=lambda: TaskConfig(split="test", limit=20, num_ops=2, ops="+-*"))
    prm: PRMConfig = field(default_factory=PRMConfig)     # prm.path: a dir saved by `python -m prm.train`
    method: dict[str, MethodConfig] = field(default_factory=dict)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    trainer: SearchTrainerConfig = field(default_factory=SearchTrainerConfig)   # trainer.out_dir, trainer.resume
    data_root: str | None = None              # the task's files (gsm8k, math500); null: ../shared/data next to the repo
    job: SearchJob = SearchJob.search
    pool: PoolSampleConfig = field(default_factory=PoolSampleConfig)   # job=pool (rl.sample_pool)
    plot: bool = True
    progress: bool = True                     # a tqdm bar per run (generation rounds)

    def __post_init__(self):
        check_ranges(self, "", ns=">= 1")
        for name, method in self.method.items():   # named by their place: method.beam.beam_width
            check_ranges(method, f"method.{name}.", beam_width=">= 1", max_iterations=">= 1", ns=">= 1")


# The schema is the base of configs/search.yaml (its defaults list starts with it), so every key of
# SearchConfig can be overridden on the command line and a misspelt one fails at composition.
ConfigStore.instance().store(name="search_schema", node=SearchConfig)


# ---------------------------------------------------------------- PRM adapter
class TimedScorer:
    """The PRM as the methods' score function, timed. Step-wise methods score with a prefix cache
    that lives for one run (start_run)."""

    def __init__(self, prm, prefix_cache_gb: float = 0.0):
        self.prm, self.prefix_cache_gb, self.seconds = prm, prefix_cache_gb, 0.0
        self.score = prm.score

    def start_run(self, step_wise: bool) -> None:
        from prm.model import EnsemblePRM
        from prm.prefix_cache import PrefixCachedScorer, supports

        self.seconds = 0.0
        cached = step_wise and self.prefix_cache_gb > 0 and isinstance(self.prm, EnsemblePRM) and supports(self.prm)
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


def load_scorer(cfg: "SearchConfig", task):
    """The step scorer scorer.source names: the PRM, or the policy reading its own steps (an HF copy of
    the policy on policy.device, the prompt exactly as the policy saw it; its passes count as policy_passes,
    their positions as scorer_forward_tokens: a read of its own, not the generation's logits)."""
    if cfg.scorer.source == ScorerSource.prm:
        return load_prm(cfg.prm)
    from prm.confidence import PolicyConfidence
    from core.models import load_model

    model, tok = load_model(cfg.policy.model, cfg.policy.dtype)
    model.to(resolve_device(cfg.policy.device)).eval()
    reduce = cfg.scorer.source.removeprefix("confidence_")
    return PolicyConfidence(model, tok, reduce, batch_size=cfg.prm.batch_size, prompt=lambda q: task.prompt(tok, q))


def scorer_passes(cfg: "SearchConfig") -> str:
    return "prm_passes" if cfg.scorer.source == ScorerSource.prm else "policy_passes"


# ---------------------------------------------------------------- evaluation
def bon_sizes(n: int) -> list[int]:
    """n' = 1, 2, 4, ... <= n, plus n itself."""
    sizes = [1 << k for k in range(n.bit_length()) if 1 << k <= n]
    return sizes + ([n] if sizes[-1] != n else [])


def label(method: str, selector: str, beta: float) -> str:
    return f"{method}/{selector}" + (f" (mean-{beta:g}std)" if beta else "")


def choices(method: str, outcome: SearchOutcome, n: int, selectors: list[str], specs: list[ScoreSpec],
            passes: str = "prm_passes") -> list[dict]:
    """Every (n', selector, beta) answer this outcome yields, with the compute it took."""
    if method == "greedy":
        sol = outcome.solutions[0]
        return [{"label": "greedy", "n": 1, "answer": sol.answer, "cost": asdict(outcome.cost)}]
    rows = []
    prefixes = bon_sizes(n) if method == "best_of_n" else [n]
    for size in prefixes:
        sols = outcome.solutions[:size] if method == "best_of_n" else outcome.solutions
        cost = prefix_cost(sols, passes) if method == "best_of_n" else outcome.cost
        for selector in selectors:
            for spec in specs[:1] if selector in SCORE_FREE_SELECTORS and method == "best_of_n" else specs:
                pick = SELECTORS[selector](sols, spec)
                rows.append({"label": label(method, selector, spec.beta), "n": size,
                             "answer": None if pick is None else sols[pick].answer, "cost": asdict(cost)})
    return rows


@dataclass
class SearchRun:
    """What every run of one seed shares: the problems (and their prompts), the policy, the PRM scorer,
    the answer checker, the config and where records go."""
    cfg: SearchConfig
    problems: list[Problem]
    sproblems: list[SearchProblem]
    policy: RolloutPolicy
    scorer: TimedScorer
    checker: AnswerChecker
    out_dir: Path
    seed: int


def planned_runs(method: str, mcfg: MethodConfig, cfg: SearchConfig) -> list[tuple[int, list[float]]]:
    """(n, betas) per record file: best-of-N reads every beta off one sample set, beam/DVTS run per beta."""
    betas = list(cfg.scorer.betas)
    if method == "greedy":
        return [(1, [0.0])]
    if method == "best_of_n":
        return [(max(cfg.ns), betas)]
    return [(n, [b]) for n in sorted(set(mcfg.ns or cfg.ns)) if n >= 2 for b in betas]


def run_method(run: SearchRun, method: str, mcfg: MethodConfig) -> None:
    """All runs of one method for one seed: one record file per (n, beta) run, kept when complete."""
    unknown = set(mcfg.selectors) - set(SELECTORS)
    if unknown:
        raise KeyError(f"selectors {sorted(unknown)} unknown; registered: {sorted(SELECTORS)}")
    step_wise = method in ("beam", "dvts")                   # one PRM call per generation round
    for n, betas in planned_runs(method, mcfg, run.cfg):
        name = f"{method}-n{n}-beta{betas[0]:g}-seed{run.seed}" if step_wise else f"{method}-n{n}-seed{run.seed}"
        path = run.out_dir / "records" / f"{name}.jsonl"
        stamp = run_stamp(run.cfg, mcfg, betas)
        if run.cfg.trainer.resume == "auto" and _complete(path, stamp, len(run.problems)):
            print(f"[search] seed {run.seed} {method} n={n}: done before, record kept ({path.name})", flush=True)
            continue
        specs = [ScoreSpec(run.cfg.scorer.aggregate, b) for b in betas]
        outcomes, seconds = search_once(run, method, mcfg, n, specs[0], step_wise)
        per_problem = [choices(method, o, n, mcfg.selectors, specs, scorer_passes(run.cfg)) for o in outcomes]
        flat = [(p, row) for p, rows in zip(run.problems, per_problem) for row in rows]
        verdicts = run.checker.verify_many([p.reference_answer for p, _ in flat], [r["answer"] for _, r in flat])
        for (_, row), verdict in zip(flat, verdicts):
            row["correct"] = verdict == "correct"
            if verdict == "unverified":  # math-verify timed out: not counted correct, but said so
                row["unverified"] = True
        lines = [{**record(prob, outcome, rows, method, n, betas, run.seed, run.cfg, seconds), "stamp": stamp}
                 for prob, outcome, rows in zip(run.problems, outcomes, per_problem)]
        write_records(path, lines)
        print_run(run, method, n, outcomes, per_problem, seconds, verdicts.count("unverified"))


def search_once(run: SearchRun, method: str, mcfg: MethodConfig, n: int, spec: ScoreSpec, step_wise: bool):
    """One method at one n over every problem, seeded on its own; the outcomes and the seconds it took."""
    settings = SearchSettings(n=n, beam_width=mcfg.beam_width, max_iterations=mcfg.max_iterations,
                              spec=spec, fallback_last_number=run.cfg.task.fallback_last_number,
                              filter_duplicates=mcfg.filter_duplicates, sort_completed=mcfg.sort_completed,
                              scorer_passes=scorer_passes(run.cfg))
    seed_run(run.seed, method, n)
    run.policy.seconds = 0.0
    run.scorer.start_run(step_wise)
    start = time.perf_counter()
    # step-wise search can run for many minutes on a CPU: show each generation round as it ends
    rounds = mcfg.max_iterations + 1 if step_wise else 1
    with tqdm(total=rounds, desc=f"seed {run.seed} {method} n={n}", unit="round", disable=not run.cfg.progress,
              dynamic_ncols=True, leave=False) as run.policy.bar:
        outcomes = METHODS[method](run.sproblems, run.policy, run.scorer, settings)
    run.policy.bar = None
    return outcomes, {"total": time.perf_counter() - start, "policy": run.policy.seconds, "prm": run.scorer.seconds}


def write_records(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines)
    tmp.replace(path)   # atomic: a killed run leaves no half-written record that looks complete


def print_run(run: SearchRun, method: str, n: int, outcomes, per_problem: list[list[dict]], seconds: dict,
              unverified: int = 0) -> None:
    acc = {r["label"]: 0 for r in per_problem[0] if r["n"] == n}
    for rows in per_problem:
        for r in rows:
            if r["n"] == n:
                acc[r["label"]] += r["correct"]
    tokens = sum(o.cost.generated_tokens for o in outcomes) / len(outcomes)
    ran = {k: sum(getattr(o.cost, f"{k}_forward_tokens") for o in outcomes) / len(outcomes) for k in ("policy", "scorer")}
    print(f"[search] seed {run.seed} {method} n={n}: {seconds['total']:.0f}s (policy {seconds['policy']:.0f}s, "
          f"prm {seconds['prm']:.0f}s), {tokens:.0f} tokens/problem, forward positions/problem policy "
          f"{ran['policy']:.0f} scorer {ran['scorer']:.0f}; correct/{len(run.problems)}: "
          + ", ".join(f"{k} {v}" for k, v in acc.items()) + (f"; unverified answers: {unverified}" if unverified else ""),
          flush=True)


def record(prob: Problem, outcome: SearchOutcome, rows: list[dict], method: str, n: int, betas: list[float],
           seed: int, cfg: SearchConfig, seconds: dict) -> dict:
    return {
        "source": prob.source, "question": prob.question, "reference": prob.reference_answer,
        "method": method, "n": n, "betas": betas, "aggregate": cfg.scorer.aggregate, "scorer": cfg.scorer.source.value,
        "seed": seed,
        "solutions": [{"text": s.text, "answer": s.answer, "mean": s.mean, "std": s.std, "tokens": s.n_tokens}
                      for s in outcome.solutions],
        "trace": outcome.trace, "cost": asdict(outcome.cost), "results": rows,
        "batch_seconds": seconds,   # wall time of the whole batch of problems, not of this one
    }


def run_stamp(cfg: SearchConfig, mcfg: MethodConfig, betas: list[float]) -> str:
    """What a run's result depends on besides (method, n, seed): policy, PRM, problems, scoring and the
    method's settings. A record is reused on resume only under the same stamp."""
    volatile = ("batch_size", "device", "gpu_memory_utilization", "kv_cache_gb", "max_model_len", "n", "stop",
                "parity_prompt", "parity_completion", "parity_tolerance")   # placement, batching, unused here
    key = {"policy": {"model": cfg.policy.model, "dtype": cfg.policy.dtype},
           "rollout": {k: v for k, v in asdict(cfg.rollout).items() if k not in volatile},
           "prm": {k: v for k, v in asdict(cfg.prm).items() if k not in ("batch_size", "device")},
           "task": asdict(cfg.task), "aggregate": cfg.scorer.aggregate, "betas": betas, "method": asdict(mcfg)}
    key["method"].pop("ns", None)
    if cfg.scorer.source != ScorerSource.prm:   # absent for the PRM: records written before the key stay valid
        key["scorer"] = cfg.scorer.source.value
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _complete(path: Path, stamp: str, problems: int) -> bool:
    if not path.is_file():
        return False
    lines = path.read_text().splitlines()
    return len(lines) == problems and all(json.loads(line).get("stamp") == stamp for line in lines)


def search(cfg: SearchConfig) -> Path:
    from rl.search_report import write_report

    if not cfg.method:
        raise ValueError("no method selected: pass e.g. 'method=[greedy,best_of_n,beam,dvts]'")
    unknown = set(cfg.method) - set(METHODS)
    if unknown:
        raise KeyError(f"methods {sorted(unknown)} unknown; registered: {sorted(METHODS)}")
    ScoreSpec(cfg.scorer.aggregate)   # fail on a bad aggregate before loading anything
    out_dir = Path(cfg.trainer.out_dir)
    problems, task = load_task(cfg.task, cfg.data_root)
    scorer = TimedScorer(load_scorer(cfg, task), cfg.scorer.prefix_cache_gb)
    checker = AnswerChecker()
    order = [m for m in METHODS if m in cfg.method]          # registry order: greedy first
    try:
        for seed in cfg.seeds:
            backend, tok = make_backend(cfg.policy, cfg.rollout, seed)
            policy = RolloutPolicy(backend, cfg.rollout)
            prompts = [task.prompt(tok, p.question) for p in problems]
            # step-wise search continues from token ids (rl.search_methods): the prompt's as the backend reads it
            sproblems = [SearchProblem(p.question, text, p.reference_answer, p.source, backend.prompt_ids(text))
                         for p, text in zip(problems, prompts)]
            run = SearchRun(cfg, problems, sproblems, policy, scorer, checker, out_dir, seed)
            for method in order:
                run_method(run, method, cfg.method[method])
            close = getattr(backend, "close", None)
            if close:
                close()
            del backend
    finally:
        checker.close()
    report = write_report(out_dir, plot=cfg.plot, title=f"{cfg.task.name} ({len(problems)} problems)")
    print(report.read_text())
    return out_dir


@hydra.main(config_path="pkg://configs", config_name="search", version_base=None)
def main(cfg: DictConfig) -> None:
    from rl.rollout import exit_on_sigterm

    exit_on_sigterm()   # a killed run shuts its vLLM engine down; complete records are kept (resume)
    # A plain container: a key force-added on the command line ('+policy.x=1') must fail too.
    config = validate(OmegaConf.to_container(cfg, resolve=True), SearchConfig)
    if config.job == SearchJob.pool:
        write_pool(config)
    else:
        search(config)


if __name__ == "__main__":   # the guard matters: the vLLM engine starts worker processes with spawn
    main()
