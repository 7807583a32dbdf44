"""`python -m prm.train`: train the ensemble PRM standalone over a pool (docs/method.md, Eq. 4 and Eq. 5).

select.mode=uncertain  stream the pool once in batches of prm.batch_size; Eq. 5 picks the uncertain
                       trajectories (at most the per-batch share of the label budget, most uncertain
                       first); only those are sent to the judge and trained on.
select.mode=random     the same budget, picked uniformly at random in each batch (the baseline).
select.mode=all        every trajectory labelled and trained on (select.budget is ignored).
job=filter             one-shot: score the pool with a trained PRM (prm.path), write the Eq. 5-uncertain
                       part as JSONL (filter_out) for a judge and a fresh PRM.
Labels: judge.name=oracle reveals the pool's own labels (hidden from the learner until revealed), any
other judge (rule, llm) labels an unlabelled pool; every label goes through the SQLite ledger first.
select.budget <= 1 is a fraction of the pool, > 1 a label count. epochs > 1 replays the acquired labels.
Multi-process: `torchrun --nproc_per_node 2 -m prm.train ...` (gloo on CPU): each rank streams its
shard of the pool with its share of the budget; DeepSpeed averages the gradients.
Checkpoints (<out_dir>/ckpt: trainable weights, optimizer, scheduler, pool position, acquired labels,
RNG, ledger path) every trainer.save_every steps (a step: one batch of the pool or of the replays, one line
of metrics.jsonl; 0: only the last) and at the end; trainer.resume=auto continues from the latest.
Outputs: <out_dir>/prm (EnsemblePRM.save), metrics.jsonl, tb/ (tensorboard), eval.json + eval.md.
From Python: train(cfg) is the command; train_on_pool(cfg, pool, prm=, features=) trains on trajectories
you already hold (a PRM you built, step features computed once for many runs); outcomes= trains the same
ensemble as an outcome reward model on them (prm.update, `outcomes`).
"""
from __future__ import annotations

import json
import math
import os
import random
from dataclasses import replace
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from core.config import validate
from core.run import MetricsLog, out_dir_lock, resume_dir, seed_everything
from prm.config import PRMJob, PRMTrainConfig, SelectMode
from prm.data import load_pool
from prm.selection import Selection
from tasks.problems import Trajectory


def rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def read_pool(cfg: PRMTrainConfig) -> list[Trajectory]:
    """The pool's rows, validated (a bad row names file, line and field) and shuffled; needs no model,
    so a run reads it before loading one. A judge that reveals the pool's own labels needs them all."""
    d = cfg.pool
    kw = {"neutral_as": d.neutral_as} if d.name == "prm800k" else {}
    pool = load_pool(d.name, d.path, root=cfg.data_root, subset=d.subset, skip_bad_rows=d.skip_bad_rows, **kw)
    if cfg.judge.name == "oracle" and cfg.job == PRMJob.train and any(t.first_error is None for t in pool):
        raise ValueError("judge=oracle needs a labelled pool; use judge=rule or judge=llm for an unlabelled one")
    random.Random(d.shuffle_seed).shuffle(pool)
    return pool


def load_training_pool(cfg: PRMTrainConfig, prm, pool: list[Trajectory] | None = None) -> list[Trajectory]:
    """Shuffled pool (`pool`: read_pool's, else read now), items longer than pool.max_tokens dropped,
    first pool.limit kept."""
    d = cfg.pool
    pool = read_pool(cfg) if pool is None else pool
    kept = []
    for t in pool:
        if d.max_tokens is None or len(prm.encode(t.question, t.steps)[0]) <= d.max_tokens:
            kept.append(t)
        if d.limit is not None and len(kept) >= d.limit:
            break
    return kept


def make_revealer(cfg: PRMTrainConfig, pool: list[Trajectory], out: Path):
    """A function picked-trajectories -> first-error labels, paid through the ledger. The ledger is opened
    the way every labelling command opens it (judges.session.open_judge): path and budgets from the judge
    config (judge.ledger_path, judge.max_labels, judge.max_total_tokens), and an llm judge is checked
    (endpoint, key, model) before any training. `reveal.refused` / `reveal.invalid` count the picked
    items that came back unlabelled (budget, or a judge that kept failing) / with an invalid verdict."""
    from judges.session import open_judge
    context = {}
    if cfg.judge.name == "oracle":
        if any(t.first_error is None for t in pool):
            raise ValueError("judge=oracle needs a labelled pool; use judge=rule or judge=llm for an unlabelled one")
        context["records"] = [{"question": t.question, "steps": t.steps, "first_error": t.first_error} for t in pool]
    elif cfg.judge.name == "rule_outcome":   # the pool's verified answers (rl.search pools: meta.correct)
        context["records"] = [{"question": t.question, "steps": t.steps, "correct": t.meta.get("correct")}
                              for t in pool]
    judge, ledger = open_judge(cfg.judge, default_path=out / "ledger.sqlite", **context)

    def reveal(picked: list[Trajectory]) -> list[int | None]:
        verdicts = ledger.label(judge, [(t.question, t.steps) for t in picked])
        reveal.refused += sum(v is None for v in verdicts)  # the judge budget ran out: not labels used
        reveal.invalid += sum(v is not None and not v.valid for v in verdicts)  # paid, but nothing to learn
        return [None if v is None else v.first_error for v in verdicts]
    reveal.refused = reveal.invalid = 0
    return reveal, str(ledger.path)


def _rng(cfg: PRMTrainConfig, rank: int, *parts: int) -> np.random.Generator:
    # stateless per-batch randomness: a resumed run draws exactly what the uninterrupted one drew
    return np.random.default_rng([cfg.trainer.seed, rank, *parts])


def _reduce_over_ranks(value: int, world: int, op: str = "max") -> int:
    if world == 1:
        return value
    # nccl reduces GPU tensors only, gloo CPU tensors only
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], device=device)
    torch.distributed.all_reduce(t, op={"max": torch.distributed.ReduceOp.MAX, "sum": torch.distributed.ReduceOp.SUM}[op])
    return int(t.item())


class PoolTrainer:
    """One `job=train` run over this rank's shard of the pool: set-up (budget, features, resume) in the
    constructor, then one method per kind of update; `train` drives them."""

    def __init__(self, cfg: PRMTrainConfig, prm, pool: list[Trajectory] | None, cache, out: Path,
                 outcomes: list[bool] | None = None):
        from prm.update import PRMLearner

        self.cfg, self.prm, self.out, self.external_cache = cfg, prm, out, cache
        self.rank, self.world = rank_world()
        full_pool = pool if pool is not None else load_training_pool(cfg, prm)
        self.full_pool = full_pool[: len(full_pool) - len(full_pool) % self.world]  # equal shards: ranks step together
        self.shard = self.full_pool[self.rank::self.world]
        # an outcome reward model: each trajectory's verdict, sharded as the pool is (None: step labels)
        self.outcomes = None if outcomes is None else list(outcomes[: len(self.full_pool)])[self.rank::self.world]
        self.hidden = [replace(t, first_error=None) for t in self.shard]      # the learner never sees pool labels
        self.reveal, ledger_path = make_revealer(cfg, self.full_pool, out)
        self.mode, fraction = cfg.select.mode, cfg.select.budget
        self.budget = len(self.full_pool) if self.mode == SelectMode.all else (
            round(fraction * len(self.full_pool)) if fraction <= 1 else int(fraction))
        self.my_budget = self.budget // self.world + (1 if self.rank < self.budget % self.world else 0)
        self.bs = cfg.prm.batch_size
        self.n_stream = math.ceil(len(self.shard) / self.bs)
        self.learner = PRMLearner(prm, cfg.trainer, cache=cache)
        self._features()
        self.ckpt = out / "ckpt"
        self.state = {"update": 0, "labels_used": 0, "labels_invalid": 0, "acquired": [], "ledger": ledger_path}
        self._resume()
        self.plan: list[list[int]] | None = None

    def _features(self) -> None:
        cfg, learner = self.cfg, self.learner
        if learner.cache is None or self.external_cache is not None:
            return
        if cfg.feature_cache and Path(cfg.feature_cache).is_file():
            from prm.features import FeatureCache
            from prm.model import feature_dim
            loaded = FeatureCache.load(cfg.feature_cache)
            width = feature_dim(learner.prm.cfg, learner.prm.hidden_size)  # what the heads read (prm.step_features)
            if loaded.max_length == learner.cache.max_length and loaded.width in (None, width):
                learner.cache = loaded
            else:
                print(f"[prm.train] {cfg.feature_cache} holds features for another max_length or step_features "
                      f"(width {loaded.width}, the heads read {width}): computing them again")
        learner.features(self.hidden, progress=cfg.trainer.progress and self.rank == 0)
        if cfg.feature_cache and self.world == 1:
            learner.cache.save(cfg.feature_cache)

    def _resume(self) -> None:
        resume_from = resume_dir(self.cfg.trainer.resume, self.ckpt, "latest")
        if resume_from is None:
            return
        self.state = self.learner.load_checkpoint(resume_from, fall_back=self.cfg.trainer.resume == "auto")
        torch.set_rng_state(self.state["rng_torch"])
        random.setstate(self.state["rng_python"])
        if self.rank == 0:
            print(f"resumed from {resume_from} at update {self.state['update']} "
                  f"({self.state['labels_used']} labels used)")

    def save(self) -> None:
        self.state.update(rng_torch=torch.get_rng_state(), rng_python=random.getstate())
        self.learner.save_checkpoint(self.ckpt, self.state)

    def replay_batches(self) -> list[list[int]]:
        """epochs - 1 shuffled passes over the acquired labels, the same number of batches on every rank."""
        acquired, bs = self.state["acquired"], self.bs
        per_epoch = _reduce_over_ranks(math.ceil(len(acquired) / bs), self.world)
        plan = []
        for epoch in range(1, self.cfg.epochs):
            order = _rng(self.cfg, self.rank, 10_000 + epoch).permutation(len(acquired)).tolist()
            order = (order * (per_epoch * bs // max(len(order), 1) + 1))[: per_epoch * bs] if order else []
            plan += [order[i * bs: (i + 1) * bs] for i in range(per_epoch)]
        return plan

    def stream_step(self, u: int) -> dict:
        """Batch u of the stream: select within this batch's share of the budget, reveal, train."""
        idx = list(range(u * self.bs, min((u + 1) * self.bs, len(self.shard))))
        batch = [self.hidden[i] for i in idx]
        remaining_items = len(self.shard) - u * self.bs
        allowed = math.ceil((self.my_budget - self.state["labels_used"]) * len(batch) / remaining_items)
        allowed = max(0, min(allowed, len(batch)))
        m = self.learner.update(batch, Selection(self.mode, allowed, _rng(self.cfg, self.rank, u)), reveal=self.reveal,
                                outcomes=self._outcomes(idx))
        refused, self.reveal.refused = self.reveal.refused, 0   # the judge budget ran out: not labels used
        invalid, self.reveal.invalid = self.reveal.invalid, 0   # paid invalid verdicts: not labels either
        self.state["labels_used"] += m["selected"] - refused - invalid
        self.state["labels_invalid"] = self.state.get("labels_invalid", 0) + invalid
        self.state["acquired"] += [(i, k) for i, k in zip(idx, self.learner.last_labels) if k is not None]
        return {**m, "phase": "stream"}

    def replay_step(self, r: int) -> dict:
        chosen = [self.state["acquired"][j] for j in self.plan[r]]
        batch = [replace(self.hidden[i], first_error=k) for i, k in chosen] or self.hidden[:1]
        # no acquired label yet: regulariser only
        m = self.learner.update(batch, [bool(chosen)] * len(batch), outcomes=self._outcomes([i for i, _ in chosen] or [0]))
        return {**m, "phase": "replay"}

    def _outcomes(self, idx: list[int]) -> list[bool] | None:
        return None if self.outcomes is None else [self.outcomes[i] for i in idx]

    def finish(self) -> dict:
        from prm.eval import evaluate, prm_scorer

        cfg, out, rank, state = self.cfg, self.out, self.rank, self.state
        self.save()
        labels_used = _reduce_over_ranks(state["labels_used"], self.world, "sum")
        labels_invalid = _reduce_over_ranks(state.get("labels_invalid", 0), self.world, "sum")
        summary = {"mode": str(self.mode), "pool": len(self.full_pool), "budget": self.budget,
                   "labels_used": labels_used, "labels_invalid": labels_invalid, "updates": state["update"]}
        if self.world > 1:  # evidence for the multi-process test: same weights on every rank, disjoint shards
            heads_sum = sum(float(p.detach().double().sum()) for p in self.prm.heads.parameters())
            (out / f"rank{rank}.json").write_text(json.dumps({"heads_sum": heads_sum, "labels_local": state["labels_used"],
                                                              "shard": [t.source for t in self.shard]}))
        if rank == 0:
            self.prm.save(out / "prm")
            if cfg.run_eval:
                summary["eval"] = evaluate(prm_scorer(self.learner, cfg.eval.batch_size), cfg.eval, cfg.data_root,
                                           out, f"({self.mode}, {labels_used} labels)")
                if self.learner.cache is not None and cfg.feature_cache and self.external_cache is None:
                    self.learner.cache.save(cfg.feature_cache)
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            print(json.dumps({k: v for k, v in summary.items() if k != "eval"}))
        return summary


def train(cfg: PRMTrainConfig) -> dict:
    """What `python -m prm.train` runs: job=train over the pool cfg.pool names (with the PRM cfg.prm
    builds), or job=filter."""
    return _run(cfg, None, None, None)


def train_on_pool(cfg: PRMTrainConfig, pool: list[Trajectory], prm=None, features=None,
                  outcomes: list[bool] | None = None) -> dict:
    """Train a PRM on trajectories you already hold, streamed in the order given, with cfg's selection,
    budget, judge (judge.name=oracle reveals the pool's own first_error labels), epochs and trainer;
    cfg.pool is not read. `prm`: a PRM you built, trained in place (default: the one cfg.prm builds).
    `features`: a prm.features.FeatureCache already holding the step features of every trajectory, so
    that a frozen-backbone PRM, even a heads-only one (EnsemblePRM.heads_only), trains without running
    its backbone: many runs over one pool then compute the features once. `outcomes` (one per trajectory):
    an outcome reward model, every scored step of a labelled trajectory trained towards its verdict; the
    selection and the paid labels stay as they are. Returns the run's summary (labels_used, updates, ...);
    the trained PRM is also saved under <trainer.out_dir>/prm."""
    if cfg.job != PRMJob.train:
        raise ValueError(f"train_on_pool trains (job=train); job={cfg.job} reads cfg.pool: use prm.train.train(cfg)")
    if outcomes is not None and len(outcomes) != len(pool):
        raise ValueError(f"train_on_pool: {len(outcomes)} outcomes for {len(pool)} trajectories")
    return _run(cfg, prm, list(pool), features, outcomes)


def _run(cfg: PRMTrainConfig, prm, pool: list[Trajectory] | None, features, outcomes=None) -> dict:
    """This rank's device, the out_dir lock, the seed, the pool read and checked before any model loads,
    the PRM (cfg.prm's unless given); then the job."""
    from prm.model import EnsemblePRM

    rank, world = rank_world()
    if world > 1 and cfg.prm.device == "cuda":   # one GPU per rank under torchrun: cuda:LOCAL_RANK
        cfg.prm.device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
        torch.cuda.set_device(cfg.prm.device)
    out = Path(cfg.trainer.out_dir)
    with out_dir_lock(out, enabled=rank == 0):  # a second run on this out_dir fails here, before any load
        seed_everything(cfg.trainer.seed)
        rows = read_pool(cfg) if pool is None else None  # bad rows fail here, before any model loads
        prm = prm if prm is not None else EnsemblePRM.from_config(cfg.prm)
        if cfg.job == PRMJob.filter:
            return filter_pool(cfg, prm, out, rows)
        pool = pool if pool is not None else load_training_pool(cfg, prm, rows)
        return _train(cfg, prm, pool, features, out, rank, outcomes)


def _train(cfg: PRMTrainConfig, prm, pool: list[Trajectory], cache, out: Path, rank: int, outcomes=None) -> dict:
    """The job=train loop: the pool streamed once (Eq. 5 / random / all within the budget), then epochs - 1
    replays of the acquired labels; checkpoints every trainer.save_every updates."""
    run = PoolTrainer(cfg, prm, pool, cache, out, outcomes)
    state, n_stream = run.state, run.n_stream
    logger = MetricsLog(out, "step", enabled=rank == 0, tb_prefix="prm/")
    total = n_stream + (len(run.replay_batches()) if cfg.epochs > 1 and state["update"] >= n_stream else 0)
    bar = tqdm(total=total, initial=state["update"], disable=not cfg.trainer.progress or rank != 0, desc=str(run.mode))
    while True:
        u = state["update"]
        if u < n_stream:
            m = run.stream_step(u)
        else:  # replays of the acquired labels (epochs > 1)
            run.plan = run.plan if run.plan is not None else run.replay_batches()
            if u - n_stream >= len(run.plan):
                break
            bar.total = n_stream + len(run.plan)
            m = run.replay_step(u - n_stream)
        state["update"] += 1
        logger.write({"step": state["update"], **m, "labels_used": state["labels_used"]})
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}", labels=state["labels_used"])
        if cfg.trainer.save_every and state["update"] % cfg.trainer.save_every == 0:
            run.save()
        if cfg.stop_after_batches is not None and state["update"] >= cfg.stop_after_batches:
            run.save()
            bar.close()
            logger.close()
            return {"stopped_at": state["update"], "labels_used": state["labels_used"]}
        if u + 1 >= n_stream and cfg.epochs <= 1:
            break
    bar.close()
    logger.close()
    return run.finish()


def filter_pool(cfg: PRMTrainConfig, prm, out: Path, rows: list[Trajectory] | None = None) -> dict:
    """One-shot filtering: keep the Eq. 5-uncertain part of an (unlabelled) pool, as JSONL."""
    from prm.selection import select_uncertain
    pool = load_training_pool(cfg, prm, rows)
    scores = prm.score([t.question for t in pool], [t.steps for t in pool], cfg.prm.batch_size)
    path = Path(cfg.filter_out or out / "uncertain.jsonl")
    kept = 0
    with path.open("w") as fh:
        for t, s in zip(pool, scores):
            mu, sigma = torch.tensor([s.mean]), torch.tensor([s.std])
            if bool(select_uncertain(mu, sigma, torch.ones_like(mu, dtype=torch.bool),
                                     cfg.prm.delta_pred, cfg.prm.delta_std)[0]):
                fh.write(json.dumps({**t.to_json(), "prm_mean": s.mean, "prm_std": s.std}) + "\n")
                kept += 1
    summary = {"mode": "filter", "pool": len(pool), "uncertain": kept, "fraction": kept / max(len(pool), 1),
               "out": str(path)}
    print(json.dumps(summary))
    return summary


@hydra.main(config_path="pkg://configs", config_name="prm_train", version_base=None)
def main(dcfg: DictConfig) -> None:
    train(validate(dcfg, PRMTrainConfig))


if __name__ == "__main__":
    main()
