"""One online round (docs/method.md, the online round), phase by phase:

    generate -> verify -> score -> select -> judge -> prm_update [-> rescore] -> advantage -> policy_update
    -> weight_sync

`rescore` runs only with prm_update=post_update_rewards (process rewards from the updated PRM).

`OnlineLoop.round()` is the whole algorithm on one screen, in four halves (begin, rank, learn_prm,
learn_policy) that rl.schedule may overlap across rounds; the helpers below do the bookkeeping.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from judges.base import Cost
from prm.data import Trajectory
from prm.config import SelectMode
from prm.selection import select_trajectories, select_uncertain
from prm.steps import first_below, labels_from_first_error, split_steps
from rl.algos import compute_advantages, keep_mask, outcome_source, step_end_tokens
from rl.config import PRMUpdate
from rl.policy import Sample
from rl.report import PhaseTimer, std_histogram
from rl.rollout import Completion, assert_single_version


PHASES = ("generate", "verify", "score", "select", "judge", "prm_update", "rescore", "advantage", "policy_update",
          "weight_sync", "wait_prm")  # the serial order (timing/* keys come in it); wait_prm: rl.schedule's overlap


@dataclass
class Rollout:
    """One completion and everything the round learns about it."""
    group: int
    question: str
    reference: str | None
    prompt: str
    completion: Completion
    steps: list[str]
    passed: bool = False
    mean: list[float] | None = None      # PRM step rewards
    std: list[float] | None = None
    first_error: int | None = None       # the judge's verdict (None = not judged / invalid)


@dataclass
class RoundWork:
    """A round in flight: what its phases produced so far and their busy seconds (two timers: the back
    half, judge -> prm_update, may run in another thread)."""
    index: int
    timer: PhaseTimer
    back_timer: PhaseTimer
    rollouts: list[Rollout] = field(default_factory=list)
    chosen: list[bool] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)
    metrics: dict = field(default_factory=dict)         # written by the foreground halves
    back_metrics: dict = field(default_factory=dict)    # written by learn_prm


class OnlineLoop:
    def __init__(self, cfg, task, stream, policy, rollout, learner, judge, ledger, checker):
        self.cfg, self.task, self.stream, self.policy, self.rollout = cfg, task, stream, policy, rollout
        self.learner, self.judge, self.ledger, self.checker = learner, judge, ledger, checker
        self.tok = policy.tokenizer
        self.on_phase = None  # callback(round index, phase name) when a foreground phase starts (progress display)

    def round(self, index: int) -> tuple[dict, list[float]]:
        """One round, serially. rl.schedule runs the same four halves, where valid with judge -> prm_update
        of round k in a worker thread beside round k's policy update and round k+1's generation."""
        work = self.begin(index)      # generate -> verify
        self.rank(work)               # score -> select
        self.learn_prm(work)          # judge -> prm_update
        self.learn_policy(work)       # [rescore ->] advantage -> policy_update -> weight_sync
        return self.report(work)

    def begin(self, index: int) -> RoundWork:
        show = None if self.on_phase is None else (lambda phase: self.on_phase(index, phase))
        work = RoundWork(index, PhaseTimer(show), PhaseTimer())
        problems = self.stream.next_batch(self.cfg.task.prompts_per_round)
        with work.timer("generate"):
            work.rollouts = self.generate(problems)
        with work.timer("verify"):
            verdicts = self.checker.verify_solutions([r.reference for r in work.rollouts],
                                                     [r.completion.text for r in work.rollouts],
                                                     self.cfg.task.fallback_last_number)
            for r, verdict in zip(work.rollouts, verdicts):
                r.passed = verdict == "correct"  # "unverified" (math-verify timed out) earns no reward but is counted
            work.metrics["verify/unverified"] = verdicts.count("unverified")
        return work

    def rank(self, work: RoundWork) -> None:
        with work.timer("score"):
            self.score(work.rollouts)
        with work.timer("select"):
            work.chosen = self.select(work.rollouts, work.index)

    def learn_prm(self, work: RoundWork) -> None:
        """The back half: touches the judge, the ledger and the PRM only (never the policy, the rollout
        engine or the global RNG streams), so a schedule may run it in a worker thread."""
        with work.back_timer("judge"):
            judged, work.cost = self.judge_selected(work.rollouts, work.chosen)
        with work.back_timer("prm_update"):
            work.back_metrics.update(self.update_prm(judged))
        work.back_metrics["judge/labels"] = len(judged)

    def learn_policy(self, work: RoundWork) -> None:
        if self.cfg.prm_update == PRMUpdate.post_update_rewards and "prm/agreement" in work.back_metrics:
            with work.timer("rescore"):   # the policy's process rewards come from the updated PRM
                self.score(work.rollouts)
        with work.timer("advantage"):
            samples, adv_metrics = self.advantages(work.rollouts)
        with work.timer("policy_update"):
            policy_metrics = self.update_policy(samples, work.index)
        with work.timer("weight_sync"):
            sync_metrics = self.sync()
        work.metrics.update({**adv_metrics, **{f"policy/{k}": v for k, v in policy_metrics.items()}, **sync_metrics})

    def report(self, work: RoundWork, wall: float | None = None) -> tuple[dict, list[float]]:
        """The round's metrics. timing/<phase>: busy seconds of each phase, whichever thread ran it;
        timing/round: the round's wall time (serial: the sum of the phases)."""
        rollouts, chosen, cost = work.rollouts, work.chosen, work.cost
        stds = [s for r in rollouts for s in (r.std or [])]
        busy = {**work.timer.seconds, **work.back_timer.seconds}
        timing = {k: busy[k] for k in sorted(busy, key=lambda k: PHASES.index(k[7:]) if k[7:] in PHASES else len(PHASES))}
        metrics = {"round": work.index, **self.rollout_metrics(rollouts), **work.metrics, **work.back_metrics,
                   "select/candidates": len(rollouts), "select/selected": sum(chosen),
                   "select/fraction": sum(chosen) / len(rollouts), "judge/calls": cost.calls,
                   "judge/tokens": cost.tokens, "judge/seconds": cost.seconds, **std_histogram(stds), **timing}
        metrics["timing/round"] = sum(timing.values()) if wall is None else wall
        return metrics, stds

    # ------------------------------------------------------------------ phases
    def generate(self, problems) -> list[Rollout]:
        r = self.cfg.rollout
        prompts = [self.task.prompt(self.tok, p.question) for p in problems]
        groups = self.rollout.generate(prompts, r.n, r.max_new_tokens, r.temperature, r.top_p, list(r.stop) or None)
        version = assert_single_version(groups)  # a group's baseline is only valid on-policy
        if version != self.policy.version:
            raise AssertionError(f"rollouts from policy version {version}, trainer is at {self.policy.version}")
        return [Rollout(g, p.question, p.reference_answer, prompt, c, split_steps(c.text) or [c.text.strip() or "(empty)"])
                for g, (p, prompt, group) in enumerate(zip(problems, prompts, groups)) for c in group]

    def score(self, rollouts: list[Rollout]) -> None:
        if self.learner is None:
            return
        scores = self.learner.score([r.question for r in rollouts], [r.steps for r in rollouts])
        for r, s in zip(rollouts, scores):
            r.mean, r.std = list(s.mean), list(s.std)

    def select(self, rollouts: list[Rollout], index: int) -> list[bool]:
        """prm.selection.select_trajectories; random draws as many as Eq. 5 picks (equal budget).
        A per-round budget keeps the most uncertain (random mode: a random subset)."""
        mode, budget = self.cfg.select.mode, self.cfg.select.budget_per_round
        if self.learner is None:
            mode = SelectMode.all if mode == SelectMode.all else SelectMode.none
        mu, sigma, mask = self._padded(rollouts)
        if mode == SelectMode.random:
            picks = int(select_uncertain(mu, sigma, mask, self.cfg.prm.delta_pred, self.cfg.prm.delta_std).sum())
            budget = picks if budget is None else min(budget, picks)
        rng = np.random.default_rng([self.cfg.trainer.seed, index])
        return select_trajectories(mode, mu, sigma, mask, budget, rng, self.cfg.prm.delta_pred,
                                   self.cfg.prm.delta_std).tolist()

    def judge_selected(self, rollouts: list[Rollout], chosen: list[bool]) -> tuple[list[Rollout], Cost]:
        """Labels go through the ledger (persisted before they are returned; repeats cost nothing)."""
        picked = [r for r, c in zip(rollouts, chosen) if c]
        if not picked:
            return [], Cost()
        verdicts = self.ledger.label(self.judge, [(r.question, r.steps) for r in picked])
        cost = sum((v.cost for v in verdicts if v is not None and not v.from_ledger), Cost())
        for r, v in zip(picked, verdicts):
            r.first_error = v.first_error if v is not None else None
        return [r for r in picked if r.first_error is not None], cost

    def update_prm(self, judged: list[Rollout]) -> dict:
        """The PRM learns from this round's judged rollouts; its step accuracy on them before/after."""
        if self.learner is None or not judged:
            return {}
        out = {"prm/agreement": sum(first_below(r.mean, self.cfg.prm.threshold) == r.first_error for r in judged) / len(judged),
               "prm/acc_before": self._step_accuracy(judged, [r.mean for r in judged])}
        if self.cfg.prm_update == PRMUpdate.none:
            return out
        trajectories = [Trajectory(r.question, r.steps, r.first_error, r.reference) for r in judged]
        update = self.learner.update(trajectories, [True] * len(trajectories))
        out.update({"prm/loss": update["loss"], "prm/trained": update.get("labelled", len(judged))})
        after = self.learner.score([r.question for r in judged], [r.steps for r in judged])
        out["prm/acc_after"] = self._step_accuracy(judged, [s.mean for s in after])
        return out

    def advantages(self, rollouts: list[Rollout]) -> tuple[list[Sample], dict]:
        a = self.cfg.algo
        lengths = [len(r.completion.token_ids) for r in rollouts]
        groups = [r.group for r in rollouts]
        sources = {"outcome": outcome_source([float(r.passed) for r in rollouts], lengths)}
        weights = {"outcome": a.outcome_weight if a.reward in ("outcome", "both") else 0.0,
                   "process": a.process_weight if a.reward in ("process", "both") else 0.0}
        if weights["process"] and self.learner is not None:
            values, positions = [], []
            for r in rollouts:
                ends = step_end_tokens(self.tok, r.completion.token_ids, r.completion.text, r.steps)
                k = min(len(ends), len(r.mean))  # the PRM may have truncated a long trajectory
                values.append(torch.tensor(r.mean[:k]))
                positions.append(ends[:k])
            sources["process"] = (values, positions)
        keep = keep_mask(groups, [r.passed for r in rollouts], [r.completion.finish_reason == "length" for r in rollouts],
                         a.filter_groups, a.filter_truncated)
        adv = compute_advantages(sources, weights, groups, lengths, a.advantage, keep)  # REINFORCE++ whitens the kept
        prompt_ids = {}
        samples = []
        for r, advantage, k in zip(rollouts, adv, keep):
            if k and r.completion.token_ids:
                ids = prompt_ids.setdefault(r.prompt, self.tok(r.prompt, add_special_tokens=False)["input_ids"])
                samples.append(Sample(ids, list(r.completion.token_ids), advantage))
        return samples, {"algo/kept": len(samples), "algo/adv_abs_mean":
                         float(torch.cat(adv).abs().mean()) if adv else 0.0}

    def update_policy(self, samples: list[Sample], index: int) -> dict:
        if not samples:  # nothing to learn from this round: the policy (and its version) stays
            return {}
        for s, logp in zip(samples, self.policy.logprobs(samples)):
            s.old_logprobs = logp
        if self.cfg.algo.kl_coef > 0:
            for s, logp in zip(samples, self.policy.logprobs(samples, reference=True)):
                s.ref_logprobs = logp
        generator = torch.Generator().manual_seed(self.cfg.trainer.seed * 100_003 + index)
        return self.policy.update(samples, generator)

    def sync(self) -> dict:
        """Push weights to the engine, then prove it: engine vs trainer log-probs on a fixed text."""
        if self.rollout.version == self.policy.version:
            return {}
        weights = None if self.rollout_shares_policy() else self.policy.weights_for_sync()
        seconds = self.rollout.sync_weights(weights, self.policy.version)
        r = self.cfg.rollout
        prompt = self.task.prompt(self.tok, r.parity_prompt)
        gap = self.rollout.parity_check(self.policy.logprob_fn, prompt, r.parity_completion, r.parity_tolerance)
        return {"sync/seconds": seconds, "sync/parity_gap": gap}

    # ------------------------------------------------------------------ helpers
    def rollout_shares_policy(self) -> bool:
        """The HF backend generates with the trainer's own module: a sync moves no tensors."""
        return getattr(self.rollout, "model", None) is self.policy.module

    def rollout_metrics(self, rollouts: list[Rollout]) -> dict:
        n = len(rollouts)
        procs = [sum(r.mean) / len(r.mean) for r in rollouts if r.mean]
        return {"pass_rate": sum(r.passed for r in rollouts) / n, "reward/outcome": sum(r.passed for r in rollouts) / n,
                "reward/process": sum(procs) / len(procs) if procs else float("nan"),
                "rollout/tokens": sum(len(r.completion.token_ids) for r in rollouts),
                "rollout/truncated": sum(r.completion.finish_reason == "length" for r in rollouts) / n,
                "rollout/steps_mean": sum(len(r.steps) for r in rollouts) / n,
                "policy_version": rollouts[0].completion.policy_version}  # the version that generated them

    def _padded(self, rollouts: list[Rollout]):
        width = max([len(r.mean or []) for r in rollouts] + [1])
        mu, sigma = torch.ones(len(rollouts), width), torch.zeros(len(rollouts), width)
        mask = torch.zeros(len(rollouts), width, dtype=torch.bool)
        for b, r in enumerate(rollouts):
            if r.mean is None:   # no PRM in this run
                continue
            k = len(r.mean)
            mu[b, :k], sigma[b, :k], mask[b, :k] = torch.tensor(r.mean), torch.tensor(r.std), True
        return mu, sigma, mask

    def _step_accuracy(self, judged: list[Rollout], means: list[list[float]]) -> float:
        right = total = 0
        for r, mean in zip(judged, means):
            labels = labels_from_first_error(r.first_error, len(r.steps))
            for label, score in zip(labels, mean):
                right += int((score >= self.cfg.prm.threshold) == bool(label))
                total += 1
        return right / total if total else float("nan")
