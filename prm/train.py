"""`python -m prm.train`: train the ensemble PRM standalone over a pool (DESIGN.md §2 "Standalone modes").

mode=active   stream the pool once in batches of prm.batch_size; Eq. 5 picks the uncertain
              trajectories (at most the per-batch share of the label budget, most uncertain first);
              only those are sent to the judge and trained on.
mode=random   the same budget, picked uniformly at random in each batch (the baseline).
mode=full     every trajectory labelled and trained on.
mode=filter   one-shot: score the pool with a trained PRM (prm.path), write the Eq. 5-uncertain part
              as JSONL (filter_out) for a judge and a fresh PRM.
Labels: judge.name=oracle reveals the pool's own labels (hidden from the learner until revealed), any
other judge (rule, llm) labels an unlabelled pool; every label goes through the SQLite ledger first.
budget <= 1 is a fraction of the pool, > 1 a label count. epochs > 1 replays the acquired labels.
Multi-process: `torchrun --nproc_per_node 2 -m prm.train ...` (gloo on CPU): each rank streams its
shard of the pool with its share of the budget; DeepSpeed averages the gradients.
Checkpoints (<out_dir>/ckpt: trainable weights, optimizer, scheduler, pool position, acquired labels,
RNG, ledger path) every trainer.save_every updates; trainer.resume=auto continues from the latest.
Outputs: <out_dir>/prm (EnsemblePRM.save), metrics.jsonl, tb/ (tensorboard), eval.json + eval.md.
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

from prm.config import PRMTrainConfig, validate
from prm.data import Trajectory, load_pool

MODES = ("active", "random", "full", "filter")


def rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def load_training_pool(cfg: PRMTrainConfig, prm) -> list[Trajectory]:
    """Shuffled pool, items longer than data.max_tokens dropped, first data.limit kept."""
    d = cfg.data
    kw = {"neutral_as": d.neutral_as} if d.pool == "prm800k" else {}
    pool = load_pool(d.pool, d.path, root=d.data_root, skip_bad_rows=d.skip_bad_rows, **kw)
    random.Random(d.shuffle_seed).shuffle(pool)
    kept = []
    for t in pool:
        if d.max_tokens is None or len(prm.encode(t.question, t.steps)[0]) <= d.max_tokens:
            kept.append(t)
        if d.limit is not None and len(kept) >= d.limit:
            break
    return kept


def make_revealer(cfg: PRMTrainConfig, pool: list[Trajectory], out: Path):
    """A function picked-trajectories -> first-error labels, paid through the ledger. The ledger is opened
    the way every labelling command opens it (LabelLedger.from_config): path and budgets from the judge
    config (judge.ledger_path, judge.max_labels, judge.max_total_tokens)."""
    from judges.base import make_judge
    from judges.config import validate_judge_config
    from judges.ledger import LabelLedger
    judge_cfg = validate_judge_config({"name": cfg.judge} if isinstance(cfg.judge, str) else dict(cfg.judge))
    if cfg.ledger and judge_cfg.ledger_path and Path(cfg.ledger) != Path(judge_cfg.ledger_path):
        raise ValueError(f"two ledgers configured: ledger={cfg.ledger!r} and judge.ledger_path="
                         f"{judge_cfg.ledger_path!r}; set one")
    if judge_cfg.name == "oracle":
        if any(t.first_error is None for t in pool):
            raise ValueError("judge=oracle needs a labelled pool; use judge=rule or judge=llm for an unlabelled one")
        judge = make_judge(judge_cfg, records=[{"question": t.question, "steps": t.steps,
                                                "first_error": t.first_error} for t in pool])
    else:
        judge = make_judge(judge_cfg)
    ledger = LabelLedger.from_config(judge_cfg, default_path=cfg.ledger or out / "ledger.sqlite")

    def reveal(picked: list[Trajectory]) -> list[int | None]:
        verdicts = ledger.label(judge, [(t.question, t.steps) for t in picked])
        reveal.refused += sum(v is None for v in verdicts)  # the judge budget ran out: not labels used
        return [None if v is None else v.first_error for v in verdicts]
    reveal.refused = 0
    return reveal, str(ledger.path)


class Logger:
    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tb"))
            self.jsonl = (out / "metrics.jsonl").open("a")

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                self.tb.add_scalar(f"prm/{k}", v, step)
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.jsonl.close()


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


def train(cfg: PRMTrainConfig, prm=None, pool: list[Trajectory] | None = None, cache=None) -> dict:
    """Run one training (or filter) job. `prm` / `pool` / `cache` let a caller (the benchmarks) reuse a
    loaded backbone (or a heads-only PRM, EnsemblePRM.heads_only), an already filtered pool and an
    in-memory FeatureCache across many runs."""
    from prm.eval import evaluate, prm_scorer
    from prm.features import FeatureCache
    from prm.model import EnsemblePRM
    from prm.update import PRMLearner

    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got '{cfg.mode}'")
    rank, world = rank_world()
    if world > 1 and cfg.prm.device == "cuda":   # one GPU per rank under torchrun: cuda:LOCAL_RANK
        cfg.prm.device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
        torch.cuda.set_device(cfg.prm.device)
    out = Path(cfg.trainer.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.trainer.seed)
    random.seed(cfg.trainer.seed)
    if prm is None:
        prm = EnsemblePRM.from_config(cfg.prm)
    if cfg.mode == "filter":
        return filter_pool(cfg, prm, out)
    full_pool = pool if pool is not None else load_training_pool(cfg, prm)
    full_pool = full_pool[: len(full_pool) - len(full_pool) % world]   # equal shards: ranks step together
    shard = full_pool[rank::world]
    hidden = [replace(t, first_error=None) for t in shard]             # the learner never sees pool labels
    reveal, ledger_path = make_revealer(cfg, full_pool, out)
    budget = len(full_pool) if cfg.mode == "full" else (
        round(cfg.budget * len(full_pool)) if cfg.budget <= 1 else int(cfg.budget))
    my_budget = budget // world + (1 if rank < budget % world else 0)
    bs = cfg.prm.batch_size
    n_stream = math.ceil(len(shard) / bs)

    learner = PRMLearner(prm, cfg.trainer, cache=cache)
    if learner.cache is not None and cache is None:
        if cfg.feature_cache and Path(cfg.feature_cache).is_file():
            loaded = FeatureCache.load(cfg.feature_cache)
            if loaded.max_length == learner.cache.max_length:
                learner.cache = loaded
        learner.features(hidden, progress=cfg.trainer.progress and rank == 0)
        if cfg.feature_cache and world == 1:
            learner.cache.save(cfg.feature_cache)

    state = {"update": 0, "labels_used": 0, "acquired": [], "ledger": ledger_path}
    ckpt = out / "ckpt"
    resume_from = {"auto": ckpt, "never": None}.get(cfg.trainer.resume, Path(cfg.trainer.resume))
    if resume_from is not None and (Path(resume_from) / "latest").is_file():
        state = learner.load_checkpoint(resume_from, fall_back=cfg.trainer.resume == "auto")
        torch.set_rng_state(state["rng_torch"])
        random.setstate(state["rng_python"])
        if rank == 0:
            print(f"resumed from {resume_from} at update {state['update']} ({state['labels_used']} labels used)")

    def save():
        state.update(rng_torch=torch.get_rng_state(), rng_python=random.getstate())
        learner.save_checkpoint(ckpt, state)

    def replay_batches() -> list[list[int]]:
        acquired = state["acquired"]
        per_epoch = _reduce_over_ranks(math.ceil(len(acquired) / bs), world)
        plan = []
        for epoch in range(1, cfg.epochs):
            order = _rng(cfg, rank, 10_000 + epoch).permutation(len(acquired)).tolist()
            order = (order * (per_epoch * bs // max(len(order), 1) + 1))[: per_epoch * bs] if order else []
            plan += [order[i * bs: (i + 1) * bs] for i in range(per_epoch)]
        return plan

    logger = Logger(out, rank == 0)
    plan_replay = None
    total = n_stream + (len(replay_batches()) if cfg.epochs > 1 and state["update"] >= n_stream else 0)
    bar = tqdm(total=total, initial=state["update"], disable=not cfg.trainer.progress or rank != 0, desc=cfg.mode)
    while True:
        u = state["update"]
        if u < n_stream:  # ---- the stream: select, reveal, train
            idx = list(range(u * bs, min((u + 1) * bs, len(shard))))
            batch = [hidden[i] for i in idx]
            remaining_items = len(shard) - u * bs
            allowed = math.ceil((my_budget - state["labels_used"]) * len(batch) / remaining_items)
            allowed = max(0, min(allowed, len(batch)))
            if cfg.mode == "active":
                m = learner.update(batch, select=True, reveal=reveal, max_select=allowed)
            elif cfg.mode == "random":
                pick = set(_rng(cfg, rank, u).choice(len(batch), size=allowed, replace=False).tolist())
                m = learner.update(batch, select=[i in pick for i in range(len(batch))], reveal=reveal)
            else:
                m = learner.update(batch, select=False, reveal=reveal)
            refused, reveal.refused = reveal.refused, 0
            state["labels_used"] += m["selected"] - refused
            state["acquired"] += [(i, k) for i, k in zip(idx, learner.last_labels) if k is not None]
            m["phase"] = "stream"
        else:  # ---- replays of the acquired labels (epochs > 1)
            plan_replay = plan_replay if plan_replay is not None else replay_batches()
            r = u - n_stream
            if r >= len(plan_replay):
                break
            if bar.total != n_stream + len(plan_replay):
                bar.total = n_stream + len(plan_replay)
            chosen = [state["acquired"][j] for j in plan_replay[r]]
            batch = [replace(hidden[i], first_error=k) for i, k in chosen] or hidden[:1]
            m = learner.update(batch, select=False if chosen else [False])
            m["phase"] = "replay"
        state["update"] += 1
        m["labels_used"] = state["labels_used"]
        logger.log(state["update"], m)
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}", labels=state["labels_used"])
        if state["update"] % cfg.trainer.save_every == 0:
            save()
        if cfg.stop_after_batches is not None and state["update"] >= cfg.stop_after_batches:
            save()
            bar.close()
            logger.close()
            return {"stopped_at": state["update"], "labels_used": state["labels_used"]}
        if u + 1 >= n_stream and cfg.epochs <= 1:
            break
    bar.close()
    save()
    labels_used = _reduce_over_ranks(state["labels_used"], world, "sum")
    summary = {"mode": cfg.mode, "pool": len(full_pool), "budget": budget, "labels_used": labels_used,
               "updates": state["update"]}
    if world > 1:  # evidence for the multi-process test: same weights on every rank, disjoint shards
        heads_sum = sum(float(p.detach().double().sum()) for p in prm.heads.parameters())
        (out / f"rank{rank}.json").write_text(json.dumps({"heads_sum": heads_sum, "labels_local": state["labels_used"],
                                                          "shard": [t.source for t in shard]}))
    if rank == 0:
        prm.save(out / "prm")
        if cfg.run_eval:
            summary["eval"] = evaluate(prm_scorer(learner, cfg.eval.batch_size), cfg.eval, cfg.data.data_root,
                                       out, f"({cfg.mode}, {labels_used} labels)")
            if learner.cache is not None and cfg.feature_cache and cache is None:
                learner.cache.save(cfg.feature_cache)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps({k: v for k, v in summary.items() if k != "eval"}))
    logger.close()
    return summary


def filter_pool(cfg: PRMTrainConfig, prm, out: Path) -> dict:
    """One-shot filtering: keep the Eq. 5-uncertain part of an (unlabelled) pool, as JSONL."""
    from prm.selection import select_uncertain
    pool = load_training_pool(cfg, prm)
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
