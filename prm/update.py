"""The one PRM update, shared by the standalone trainer (prm.train) and the online loop (rl/).

    learner = PRMLearner(prm: EnsemblePRM, trainer: TrainerConfig | None = None, cache: FeatureCache | None = None)
        frozen mode keeps separator features in `learner.cache` (pass a loaded FeatureCache to reuse one;
        with a heads-only PRM, EnsemblePRM.heads_only, every item must already be in it: no backbone).
    learner.score(questions: list[str], steps: list[list[str]], batch_size: int | None = None)
        -> list[StepScores]            # .mean / .std per step, no grad (cached features in frozen mode)
    learner.update(trajectories: list[Trajectory], mask: Sequence[bool] | Selection,
                   reveal: Callable[[list[Trajectory]], list[int | None]] | None = None,
                   outcomes: Sequence[bool] | None = None) -> dict[str, float]
        One forward pass over the given trajectories serves both selection and the loss, then one
        optimizer step (all ranks step together, even when nothing was selected: regulariser only);
        prm.update_steps > 1 adds forward/step passes on the same selected, labelled batch.
        mask          which trajectories are labelled and trained on: a list of bools, or a
                      prm.selection.Selection (mode, budget, rng) decided on this pass's scores with
                      prm.selection.select_trajectories (Eq. 5 thresholds from prm.delta_pred/delta_std).
        reveal        called once with the selected trajectories and returns their first-error
                      labels (None = invalid: not trained on). Default: read t.first_error. This is
                      how the pool trainer only pays for labels it selects.
        outcomes      train an outcome reward model: every scored step of a labelled trajectory gets its
                      final-answer verdict (algo.process_source=orm).
        Metrics: n, selected, labelled, loss, bce, reg, acc_before (step accuracy on the labelled
        steps; all from the first, pre-update pass), lr, pad_fraction (pad share of the backbone's
        tokens, prm.batch_layout), seconds.  `learner.last_selected` holds the mask and
        `learner.last_labels` the revealed labels of the last call.
    learner.state_dict() / load_state_dict(sd)          # model + optimizer + scheduler + step (ZeRO 0)
    learner.save_checkpoint(dir, client_state) / load_checkpoint(dir) -> client_state   # any ZeRO stage

The optimizer is a DeepSpeed engine when trainer.deepspeed (ZeRO stage prm.zero_stage, a client
torch AdamW so nothing JIT-compiles, gloo on CPU; single process unless launched by torchrun or the
deepspeed launcher), else plain torch AdamW. Backbone and heads get their own learning rates.
"""
from __future__ import annotations

import copy
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from core.checkpoint_io import (CheckpointError, deepspeed_weights_only, load_state, load_weights, rename_dir, save_state,
                                save_weights, verify, write_manifest)
from core.config import TrainerConfig
from core.distributed import deepspeed_args, init_distributed
from tasks.problems import Trajectory
from prm.features import FeatureCache
from prm.model import EnsemblePRM, PRMBatch, StepScores
from prm.selection import (Selection, bce_weights, ensemble_stats, prm_loss, select_trajectories,
                           step_labels)


def _param_groups(prm: EnsemblePRM) -> list[dict]:
    """Heads at head_lr, backbone at lr; split by dtype so ZeRO flattens each group into one buffer."""
    groups: dict[tuple, list] = {}
    for name, p in prm.named_parameters():
        if p.requires_grad:
            lr = prm.cfg.head_lr if name.startswith("heads.") else prm.cfg.lr
            groups.setdefault((lr, p.dtype), []).append(p)
    return [{"params": ps, "lr": lr} for (lr, _), ps in groups.items()]


class PRMLearner:
    def __init__(self, prm: EnsemblePRM, trainer: TrainerConfig | None = None, cache: FeatureCache | None = None):
        self.prm, self.cfg, self.trainer = prm, prm.cfg, trainer or TrainerConfig(deepspeed=False)
        self.cache = None
        if self.cfg.train_mode == "frozen":
            self.cache = cache if cache is not None else FeatureCache(self.cfg.max_length)
        self.global_step = 0
        self.last_selected: list[bool] = []
        self.last_labels: list[int | None] = []
        # fused AdamW (CPU and CUDA): one kernel instead of a per-tensor loop, which matters for heads-only
        # runs on cached features, where the optimizer step is a large share of the update (bench/RESULTS.md)
        optimizer = torch.optim.AdamW(_param_groups(prm), weight_decay=self.cfg.weight_decay, fused=True)
        warmup = max(self.cfg.warmup_steps, 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
        self.engine = None
        if self.trainer.deepspeed:
            import deepspeed
            init_distributed(self.trainer.dist_timeout_min)
            ds_config = {"train_micro_batch_size_per_gpu": self.cfg.batch_size, "gradient_accumulation_steps": 1,
                         "zero_optimization": {"stage": self.cfg.zero_stage}, "gradient_clipping": 1.0,
                         "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9}
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                args=deepspeed_args(str(prm.device)), model=prm, optimizer=optimizer, lr_scheduler=scheduler,
                config=ds_config)
            deepspeed_weights_only(self.engine)  # its own loader would run pickles
        else:
            self.optimizer, self.scheduler = optimizer, scheduler

    @property
    def collective_forwards(self) -> bool:
        """ZeRO-3 gathers the partitioned parameters inside every forward, a collective: each rank must
        then run the same PRM forwards (callers score the same items on every rank)."""
        return self.engine is not None and self.cfg.zero_stage == 3

    # ------------------------------------------------------------------ scoring
    def features(self, trajectories_or_questions, steps=None, progress: bool = False) -> list[torch.Tensor]:
        qs, ss = self._split(trajectories_or_questions, steps)
        return self.cache.compute(self.prm, qs, ss, self.cfg.batch_size, progress)

    def score(self, questions: list[str], steps: list[list[str]], batch_size: int | None = None) -> list[StepScores]:
        feats = None
        if self.cache is not None:  # frozen: reuse (and fill) the feature cache
            feats = self.cache.compute(self.prm, questions, steps, batch_size or self.cfg.batch_size, max_length=None)
        return self.prm.score(questions, steps, batch_size, features=feats)

    @staticmethod
    def _split(items, steps):
        if steps is not None:
            return list(items), list(steps)
        return [t.question for t in items], [t.steps for t in items]

    def _batch(self, trajectories: list[Trajectory]) -> PRMBatch:
        if self.cache is not None:
            feats = self.features(trajectories)
            step_mask = torch.zeros((len(feats), max([len(f) for f in feats] + [1])), dtype=torch.bool)
            for b, f in enumerate(feats):
                step_mask[b, : len(f)] = True
            return PRMBatch(step_mask, features=torch.cat(feats) if feats else None).to(self.prm.device)
        encoded = [self.prm.encode(t.question, t.steps, self.cfg.max_length) for t in trajectories]
        return self.prm.collate(encoded, layout=self.cfg.batch_layout, questions=[t.question for t in trajectories])

    # ------------------------------------------------------------------ the update
    def update(self, trajectories: list[Trajectory], mask: Sequence[bool] | Selection,
               reveal: Callable[[list[Trajectory]], list[int | None]] | None = None,
               reduce_weight: Callable[[float], tuple[float, int]] | None = None,
               outcomes: Sequence[bool] | None = None) -> dict[str, float]:
        """(See the module doc.) `reduce_weight` (data parallel): local BCE weight -> (the sum over
        ranks, the number of ranks), a collective every rank calls once per update. `outcomes` (one per
        trajectory): train an outcome reward model instead, every scored step of a labelled trajectory
        labelled with its final-answer verdict (Uesato et al.'s ORM), the step labels only deciding which
        trajectories are labelled."""
        start = time.perf_counter()
        model = self.engine if self.engine is not None else self.prm
        model.train()
        batch = self._batch(trajectories)
        logits, penalty = model(batch)
        mu, sigma = ensemble_stats(logits)
        step_mask = batch.step_mask
        if isinstance(mask, Selection):
            chosen = select_trajectories(mask.mode, mu, sigma, step_mask, mask.budget, mask.rng,
                                         self.cfg.delta_pred, self.cfg.delta_std)
        else:
            if len(mask) != len(trajectories):
                raise ValueError(f"mask has {len(mask)} entries for {len(trajectories)} trajectories")
            chosen = torch.as_tensor(list(mask), dtype=torch.bool)
        chosen = chosen.to(step_mask.device)
        picked = [t for t, c in zip(trajectories, chosen.tolist()) if c]
        revealed = reveal(picked) if (reveal is not None and picked) else [t.first_error for t in picked]
        it = iter(revealed)
        first_errors = [next(it) if c else None for c in chosen.tolist()]
        labels, labelled = (x.to(step_mask.device) for x in step_labels(first_errors, step_mask.shape[1]))
        if outcomes is not None:
            verdicts = torch.tensor([float(o) for o in outcomes], device=step_mask.device)
            labels = verdicts[:, None].expand_as(labels).clone()
            labelled = torch.tensor([k is not None for k in first_errors], device=step_mask.device)[:, None] & step_mask
        labelled &= step_mask  # truncated trajectories: no label beyond the last scored step
        norm = {}
        if reduce_weight is not None:
            local = float(bce_weights(labels, labelled, step_mask, chosen, self.cfg.pos_weight).sum()) * logits.shape[0]
            total, world = reduce_weight(local)
            norm = {"total_weight": total, "scale": float(world)}
        loss, parts = prm_loss(logits, penalty, labels, labelled, step_mask, chosen, self.cfg.reg_lambda,
                               self.cfg.pos_weight, **norm)
        self._optimizer_step(loss)
        for _ in range(self.cfg.update_steps - 1):  # same batch, selection and labels: no new judge calls
            again, penalty = model(batch)
            self._optimizer_step(prm_loss(again, penalty, labels, labelled, step_mask, chosen, self.cfg.reg_lambda,
                                          self.cfg.pos_weight, **norm)[0])
        self.last_selected, self.last_labels = chosen.tolist(), first_errors
        correct = ((mu >= self.cfg.threshold).float() == labels) & labelled
        n_lab = int(labelled.sum())
        return {"n": len(trajectories), "selected": int(chosen.sum()),
                "labelled": sum(k is not None for k in first_errors), "loss": float(loss.detach()), **parts,
                "acc_before": float(correct.sum()) / n_lab if n_lab else float("nan"),
                "lr": self.optimizer.param_groups[-1]["lr"], "pad_fraction": batch.pad_fraction,
                "seconds": time.perf_counter() - start}

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
            self.optimizer.step()
            self.scheduler.step()
        self.global_step += 1

    # ------------------------------------------------------------------ checkpoints
    def trainable_state(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.prm.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.prm.state_dict().items()
                if k in names or k.startswith("heads.")}  # heads' buffers too (the Eq. 4 anchor)

    def state_dict(self) -> dict:
        if self.engine is not None and self.cfg.zero_stage > 0:
            raise RuntimeError("with ZeRO > 0 the optimizer is partitioned: use save_checkpoint(dir)")
        # deep copies: optimizer.load_state_dict keeps same-dtype tensors by reference, so a live
        # state_dict shared between two learners would let one's steps leak into the other
        return copy.deepcopy({"model": self.trainable_state(), "optimizer": self.optimizer.state_dict(),
                              "scheduler": self.scheduler.state_dict(), "global_step": self.global_step})

    def load_state_dict(self, sd: dict) -> None:
        self.prm.load_state_dict(sd["model"], strict=False)
        self.optimizer.load_state_dict(sd["optimizer"])
        self.scheduler.load_state_dict(sd["scheduler"])
        self.global_step = sd["global_step"]

    def save_checkpoint(self, path: str | Path, client_state: dict | None = None) -> None:
        """Model (trainable part), optimizer, scheduler and `client_state` under `path` (any ZeRO stage).

        Crash-safe: a process killed mid-save leaves the previous checkpoint loadable. DeepSpeed writes
        each save under a new tag and moves `latest` only once the tag is complete; the plain path
        writes a new step directory (weights as safetensors, the rest read back with weights_only=True,
        a checksum manifest last) and then points `latest` at it. `client_state`: tensors and plain
        containers only (numpy arrays as lists)."""
        path = Path(path)
        state = {"client": dict(client_state or {}), "global_step": self.global_step}
        tag = f"step{self.global_step}"
        if self.engine is not None:
            self.engine.save_checkpoint(str(path), tag=tag, client_state=state, exclude_frozen_parameters=True)
            if int(os.environ.get("RANK", "0")) == 0:  # save_checkpoint ends with a barrier: every rank wrote
                write_manifest(path / tag, global_step=self.global_step)
        elif int(os.environ.get("RANK", "0")) == 0:
            tmp = path / f".{tag}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            sd = self.state_dict()
            save_weights(sd.pop("model"), tmp / "model.safetensors")
            save_state({**sd, "client_state": state}, tmp / "learner.pt")
            write_manifest(tmp, global_step=self.global_step)
            shutil.rmtree(path / tag, ignore_errors=True)
            rename_dir(tmp, path / tag)
            (path / "latest.tmp").write_text(tag)
            os.replace(path / "latest.tmp", path / "latest")
        if int(os.environ.get("RANK", "0")) == 0:  # this save and the one before it (a fallback)
            for old in _step_dirs(path)[2:]:
                shutil.rmtree(path / old, ignore_errors=True)

    def load_checkpoint(self, path: str | Path, fall_back: bool = False) -> dict:
        """Load the `latest` save; every file is checked against its manifest first. A damaged one is an
        error naming the file, or with fall_back=True (trainer.resume=auto) the previous intact save is
        loaded instead, with a loud warning."""
        path = Path(path)
        latest = (path / "latest").read_text().strip()
        for tag in [latest, *(t for t in _step_dirs(path) if t != latest)] if fall_back else [latest]:
            try:
                # names a damaged file before anything is read (trainer.resume_check=sha256: re-hashes every file)
                verify(path / tag, "PRM checkpoint", self.trainer.resume_check == "sha256")
            except CheckpointError as exc:
                if not fall_back:
                    raise
                print(f"WARNING: {exc}; trainer.resume=auto falls back to an older save", file=sys.stderr, flush=True)
                continue
            if tag != latest:
                print(f"WARNING: resuming from {path / tag}, not the newest save (see above)", file=sys.stderr,
                      flush=True)
            return self._load_tag(path, tag)
        raise CheckpointError(f"PRM checkpoint {path}: no intact save left to resume from")

    def _load_tag(self, path: Path, tag: str) -> dict:
        directory = path / tag
        if self.engine is not None:
            _, state = self.engine.load_checkpoint(str(path), tag=tag, load_module_strict=False)
        else:
            # to CPU whatever device saved it: load_state_dict copies onto the live device, and the client
            # state (RNG states) must stay CPU tensors
            sd = load_state(directory / "learner.pt")
            sd["model"] = load_weights(directory / "model.safetensors")
            self.load_state_dict(sd)
            state = sd["client_state"]
        self.global_step = state["global_step"]
        return state["client"]


def _step_dirs(path: Path) -> list[str]:
    """Names of the step<N> save directories under path, newest first."""
    found = [p.name for p in path.glob("step*") if p.is_dir() and p.name[4:].isdigit()]
    return sorted(found, key=lambda name: int(name[4:]), reverse=True)
