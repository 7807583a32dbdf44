"""One online round (docs/method.md, the online round), phase by phase:

    generate -> verify -> score -> select -> judge -> prm_update [-> rescore] -> advantage -> policy_update
    -> weight_sync

`rescore` runs only with prm_update=post_update_rewards (process rewards from the updated PRM).

`OnlineLoop.round()` is the whole algorithm on one screen, in four halves (begin, rank, learn_prm,
learn_policy) that rl.schedule may overlap across rounds; the helpers below do the bookkeeping.
Data parallel (core/distributed.py, the same code for 1 and N ranks): every rank draws the round's global
batch and keeps its contiguous share of prompts (whole GRPO groups); generate, verify, score and
advantages are local; selection (Eq. 5 per item, the judge budget over the gathered items), the judge
(rank 0 labels every rank's picks once through its ledger, then broadcasts the verdicts), the PRM and
policy updates (same steps on every rank, gradients all-reduced) and the metrics are global.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from judges.base import Cost
from judges.session import judge_metrics, label_counted
from tasks.problems import Trajectory
from prm.config import SelectMode
from prm.selection import select_trajectories, select_uncertain
from core.steps import first_below, labels_from_first_error, split_steps
from rl.algos import keep_mask, outcome_source, source_advantages
from rl.config import PRMUpdate, ProcessSource
from rl.credit import scale_process
from rl.process import process_source
from core.distributed import Ranks, hash_seed
from rl.policy import Sample
from rl.report import PhaseTimer, std_histogram
from rl.rollout import Completion, assert_single_version


PHASES = ("generate", "verify", "score", "select", "judge", "prm_update", "rescore", "advantage", "policy_update",
          "weight_sync", "wait_prm")  # the serial order (timing/* keys come in it); wait_prm: rl.schedule's overlap


def attempt_steps(text: str) -> list[str]:
    """A completion's steps; one that splits into none is one step (its text, or "(empty)")."""
    return split_steps(text) or [text.strip() or "(empty)"]


@dataclass
class Attempt:
    """One attempt at a problem: a completion and everything the round learns about it (its verdict,
    PRM step scores, the judge's first error)."""
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


def trace_error(passed: list[bool], wrong_step: list[bool | None]) -> float:
    """Uesato et al.'s trace error: the share of passed solutions that contain a wrong step (nan when none
    passed, or the task has no exact step rule)."""
    flags = [w for p, w in zip(passed, wrong_step) if p]
    if not flags or any(w is None for w in flags):
        return float("nan")
    return sum(flags) / len(flags)


@dataclass
class RoundWork:
    """A round in flight: what its phases produced so far and their busy seconds (two timers: the back
    half, judge -> prm_update, may run in another thread)."""
    index: int
    timer: PhaseTimer
    back_timer: PhaseTimer
    rollouts: list[Attempt] = field(default_factory=list)
    chosen: list[bool] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)
    judge_metrics: dict = field(default_factory=dict)   # judge/invalid, judge/refused_budget... (judge_selected)
    metrics: dict = field(default_factory=dict)         # written by the foreground halves
    back_metrics: dict = field(default_factory=dict)    # written by learn_prm


class OnlineLoop:
    def __init__(self, cfg, task, stream, policy, rollout, learner, judge, ledger, checker, ranks: Ranks | None = None):
        self.cfg, self.task, self.stream, self.policy, self.rollout = cfg, task, stream, policy, rollout
        self.learner, self.judge, self.ledger, self.checker = learner, judge, ledger, checker  # judge, ledger: rank 0
        self.ranks = ranks or Ranks()
        self.tok = policy.tokenizer
        self.on_phase = None  # callback(round index, phase name) when a foreground phase starts (progress display)
        self.replay = None    # prm.replay.LabelReplay: train on every paid label (set by rl.online.build)
        self.pending_judge: dict | None = None  # judge/* metrics of calls made outside a round (the held-out set)
        self.implicit = None  # prm.implicit.ImplicitPRM: algo.process_source=implicit (set by rl.online.build)

    def round(self, index: int) -> RoundWork:
        """One round, serially (rl.schedule's serial schedule; `report` turns it into metrics). The overlap
        schedule runs the same four halves with judge -> prm_update of round k in a worker thread beside
        round k's policy update and round k+1's generation."""
        work = self.begin(index)      # generate -> verify
        self.rank(work)               # score -> select
        self.learn_prm(work)          # judge -> prm_update
        self.learn_policy(work)       # [rescore ->] advantage -> policy_update -> weight_sync
        return work

    def begin(self, index: int) -> RoundWork:
        show = None if self.on_phase is None else (lambda phase: self.on_phase(index, phase))
        device = getattr(self.policy, "device", None)   # cuda: per-phase peak memory (gpu/mem_*) beside the seconds
        work = RoundWork(index, PhaseTimer(show, device), PhaseTimer(device=device))
        problems = self.stream.next_batch(self.cfg.task.prompts_per_round)   # the global batch, on every rank
        first, last = self.ranks.shard_bounds(len(problems))
        with work.timer("generate"):
            work.rollouts = self.generate(problems[first:last], index, first)
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
            judged, work.cost, work.judge_metrics = self.judge_selected(work.rollouts, work.chosen)
        with work.back_timer("prm_update"):
            work.back_metrics.update(self.update_prm(judged, work.rollouts))
        work.back_metrics["judge/labels"] = len(judged)   # this rank's; report() sums over ranks

    def learn_policy(self, work: RoundWork) -> None:
        if self.cfg.prm_update == PRMUpdate.post_update_rewards and "prm/agreement" in work.back_metrics:
            with work.timer("rescore"):   # the policy's process rewards come from the updated PRM
                self.score(work.rollouts)
        with work.timer("advantage"):
            samples, adv_metrics = self.advantages(work.rollouts, work.index)
        with work.timer("policy_update"):
            policy_metrics = self.update_policy(samples, work.index)
        with work.timer("weight_sync"):
            sync_metrics = self.sync()
        work.metrics.update({**adv_metrics, **{f"policy/{k}": v for k, v in policy_metrics.items()}, **sync_metrics})

    def report(self, work: RoundWork, wall: float | None = None) -> tuple[dict, list[float]]:
        """The round's metrics. timing/<phase>: busy seconds of each phase, whichever thread ran it;
        timing/round: the round's wall time (serial: the sum of the phases)."""
        cost = work.cost
        mine = {**work.timer.seconds, **work.back_timer.seconds}
        everyone = self.ranks.gather({"rollouts": [self._record(r) for r in work.rollouts], "chosen": sum(work.chosen),
                                      "judged": work.back_metrics.get("judge/labels", 0), "seconds": mine,
                                      "peaks": {**work.timer.peaks, **work.back_timer.peaks}})
        records = [x for part in everyone for x in part["rollouts"]]
        stds = [s for x in records for s in x["std"]]
        selected = sum(part["chosen"] for part in everyone)
        busy = {k: max(part["seconds"].get(k, 0.0) for part in everyone) for k in mine}  # the slowest rank's
        timing = {k: busy[k] for k in sorted(busy, key=lambda k: PHASES.index(k[7:]) if k[7:] in PHASES else len(PHASES))}
        metrics = {"round": work.index, **self.rollout_metrics(records), **work.metrics, **work.back_metrics,
                   "judge/labels": sum(part["judged"] for part in everyone),
                   "select/candidates": len(records), "select/selected": selected,
                   "select/fraction": selected / len(records), "judge/calls": cost.calls,
                   "judge/tokens": cost.tokens, "judge/seconds": 0.0, **work.judge_metrics, **std_histogram(stds), **timing}
        metrics["timing/round"] = sum(timing.values()) if wall is None else wall
        metrics.update({k: max(part["peaks"].get(k, 0.0) for part in everyone)    # the fullest GPU's
                        for k in sorted({k for part in everyone for k in part["peaks"]})})
        return metrics, stds

    # ------------------------------------------------------------------ phases
    def generate(self, problems, index: int = 0, first: int = 0) -> list[Attempt]:
        """`first`: the global index of problems[0]. Group g samples from seeds derived from (run seed,
        round, g), so it draws the same completions on whichever rank, in whichever batch, it lands."""
        r = self.cfg.rollout
        prompts = [self.task.prompt(self.tok, p.question) for p in problems]
        seeds = [hash_seed(self.cfg.trainer.seed, index, first + g) for g in range(len(problems))]
        groups = self.rollout.generate(prompts, r.n, r.max_new_tokens, r.temperature, r.top_p, list(r.stop) or None,
                                       seeds=seeds)
        self.rollout.sleep()  # vLLM sleep mode: the GPU is the trainer's until the next generate
        version = assert_single_version(groups)  # a group's baseline is only valid on-policy
        if version != self.policy.version:
            raise AssertionError(f"rollouts from policy version {version}, trainer is at {self.policy.version}")
        return [Attempt(first + g, p.question, p.reference_answer, prompt, c, attempt_steps(c.text))
                for g, (p, prompt, group) in enumerate(zip(problems, prompts, groups)) for c in group]

    def score(self, rollouts: list[Attempt]) -> None:
        if self.learner is None:
            return
        for r, s in zip(rollouts, self._score(rollouts)):
            r.mean, r.std = list(s.mean), list(s.std)

    def _score(self, rollouts: list[Attempt]) -> list:
        """The PRM's scores of `rollouts`. Under a ZeRO-3 PRM every forward is a collective: each rank
        scores every rank's items (gathered, the same batches everywhere) and keeps its own slice."""
        items = [(r.question, r.steps) for r in rollouts]
        if not (self.learner.collective_forwards and self.ranks.world > 1):
            return self.learner.score([q for q, _ in items], [s for _, s in items]) if items else []
        parts = self.ranks.gather(items)
        everyone = [x for part in parts for x in part]
        offset = sum(len(part) for part in parts[:self.ranks.rank])
        scores = self.learner.score([q for q, _ in everyone], [s for _, s in everyone]) if everyone else []
        return scores[offset:offset + len(items)]

    def _prefill_features(self, trajectories: list[Trajectory]) -> None:
        """Frozen PRM under ZeRO-3: the update's backbone features, computed for every rank's items on
        every rank, so the update itself runs no backbone forward (which a rank alone would run)."""
        if self.learner.cache is None or not (self.learner.collective_forwards and self.ranks.world > 1):
            return
        everyone = [t for part in self.ranks.gather(trajectories) for t in part]
        self.learner.features(everyone)

    def select(self, rollouts: list[Attempt], index: int) -> list[bool]:
        """prm.selection.select_trajectories; random draws as many as Eq. 5 picks (equal budget).
        A per-round budget keeps the most uncertain (random mode: a random subset). Decided over every
        rank's items (gathered in rank order, the order one rank would have); each rank keeps its slice."""
        mode, budget = self.cfg.select.mode, self.cfg.select.budget_per_round
        if self.learner is None:
            mode = SelectMode.all if mode == SelectMode.all else SelectMode.none
        parts = self.ranks.gather([(r.mean, r.std) for r in rollouts])
        offset = sum(len(part) for part in parts[:self.ranks.rank])
        mu, sigma, mask = self._padded_scores([x for part in parts for x in part])
        if mode == SelectMode.random:
            picks = int(select_uncertain(mu, sigma, mask, self.cfg.prm.delta_pred, self.cfg.prm.delta_std).sum())
            budget = picks if budget is None else min(budget, picks)
        rng = np.random.default_rng([self.cfg.trainer.seed, index])
        chosen = select_trajectories(mode, mu, sigma, mask, budget, rng, self.cfg.prm.delta_pred,
                                     self.cfg.prm.delta_std).tolist()
        return chosen[offset:offset + len(rollouts)]

    def judge_selected(self, rollouts: list[Attempt], chosen: list[bool]) -> tuple[list[Attempt], Cost, dict]:
        """Labels go through the ledger (persisted before they are returned; repeats cost nothing).
        Rank 0 owns the judge and the ledger: it labels every rank's picks in one call (an item picked
        on two ranks is paid once) and broadcasts the verdicts; the cost and the judge/* counts (invalid,
        refused for budget, failed, ledger hits; seconds: wall clock) are the round's, on every rank."""
        picked = [r for r, c in zip(rollouts, chosen) if c]
        parts = self.ranks.gather([(r.question, r.steps) for r in picked])
        items = [item for part in parts for item in part]
        result = None
        if self.ranks.is_main and items:
            verdicts, counts, wall_s = label_counted(self.ledger, self.judge, items)
            result = verdicts, judge_metrics(counts, wall_s), counts.cost
        verdicts, metrics, cost = self.ranks.broadcast(result) or ([], judge_metrics(None, 0.0), Cost())
        offset = sum(len(part) for part in parts[:self.ranks.rank])
        for r, v in zip(picked, verdicts[offset:offset + len(picked)]):
            r.first_error = v.first_error if v is not None else None
        return [r for r in picked if r.first_error is not None], cost, metrics

    def update_prm(self, judged: list[Attempt], rollouts: list[Attempt] | None = None) -> dict:
        """The PRM learns from this round's judged rollouts; its step accuracy on them before/after.
        Every rank steps (a rank without labels trains on a zero BCE term, with one of its `rollouts`
        as an unselected stand-in), the BCE normalised over all ranks' labels: N ranks take the step
        one rank would."""
        if self.learner is None:
            return {}
        if self.replay is not None:  # one process (rl.online refuses replay on several ranks)
            return self._update_prm_replay(judged)
        before = [x for part in self.ranks.gather([self._labelled(r, r.mean) for r in judged]) for x in part]
        if not before:  # no rank has a label (a global decision: every rank returns here)
            return {}
        out = self._before_update(before)
        if self.cfg.prm_update == PRMUpdate.none:
            return out
        trajectories = [Trajectory(r.question, r.steps, r.first_error, r.reference) for r in judged]
        mask = [True] * len(trajectories)
        if not trajectories:  # nothing of ours to learn from: a stand-in keeps the step collective
            r = (rollouts or [])[0]
            trajectories, mask = [Trajectory(r.question, r.steps, None, r.reference)], [False]
        self._prefill_features(trajectories)
        outcomes = None   # algo.process_source=orm: the same judged trajectories, their final-answer verdicts
        if self.cfg.algo.process_source == ProcessSource.orm:
            outcomes = [r.passed for r in judged] if any(mask) else [False]
        update = self.learner.update(trajectories, mask, reduce_weight=self._sum_over_ranks, outcomes=outcomes)
        losses = self.ranks.gather((update["loss"], update.get("labelled", 0)))
        out.update({"prm/loss": sum(x for x, _ in losses) / len(losses), "prm/trained": sum(n for _, n in losses)})
        after = self._score(judged)
        after = [x for part in self.ranks.gather([self._labelled(r, s.mean) for r, s in zip(judged, after)]) for x in part]
        out["prm/acc_after"] = self._step_accuracy(after)
        return out

    def _update_prm_replay(self, judged: list[Attempt]) -> dict:
        """prm.replay: the PRM trains on every paid label so far (this round's read back from the ledger,
        where they were committed) and logs its quality on the fixed held-out judged set."""
        out = {}
        if judged:
            out = self._before_update([self._labelled(r, r.mean) for r in judged])
        if self.cfg.prm_update == PRMUpdate.none:
            return out
        out.update(self.replay.train(self.learner))
        if judged:
            after = self._score(judged)
            out["prm/acc_after"] = self._step_accuracy([self._labelled(r, a.mean) for r, a in zip(judged, after)])
        return out

    def _before_update(self, before: list[tuple[int, int, list[float]]]) -> dict:
        """Judge-PRM agreement on the first error, and step accuracy, of the scores the round acted on."""
        agree = sum(first_below(mean, self.cfg.prm.threshold) == k for k, _, mean in before)
        return {"prm/agreement": agree / len(before), "prm/acc_before": self._step_accuracy(before)}

    def _sum_over_ranks(self, value: float) -> tuple[float, int]:
        return sum(self.ranks.gather(value)), self.ranks.world

    def advantages(self, rollouts: list[Attempt], index: int) -> tuple[list[Sample], dict]:
        a = self.cfg.algo
        lengths = [len(r.completion.token_ids) for r in rollouts]
        groups = [r.group for r in rollouts]
        sources = {"outcome": outcome_source([float(r.passed) for r in rollouts], lengths)}
        warming = index <= a.process_warmup_rounds   # the PRM learns from its labels; its rewards wait
        weights = {"outcome": a.outcome_weight if a.reward in ("outcome", "both") else 0.0,
                   "process": a.process_weight if a.reward in ("process", "both") and not warming else 0.0}
        metrics = {}
        if weights["process"]:
            process, metrics = process_source(self, rollouts)   # rl/process.py: the source, under its credit form
            if process is not None:
                sources["process"] = process
        reduce = None if self.ranks.world == 1 else (lambda stats: [sum(x) for x in zip(*self.ranks.gather(stats))])
        keep = keep_mask(groups, [r.passed for r in rollouts], [r.completion.finish_reason == "length" for r in rollouts],
                         a.filter_groups, a.filter_truncated)
        used = {name: src for name, src in sources.items() if weights[name]}
        advs = source_advantages(used, groups, lengths, a.advantage, keep, reduce)   # REINFORCE++: kept only
        if a.process_scale is not None and "process" in advs:
            advs["process"], metrics["algo/process_to_outcome"] = scale_process(
                advs["process"], advs["outcome"], a.process_scale, keep, reduce)
        adv = [sum((weights[name] * advs[name][i] for name in advs), torch.zeros(n)) for i, n in enumerate(lengths)]
        prompt_ids = {}
        samples = []
        for r, advantage, k in zip(rollouts, adv, keep):
            if k and r.completion.token_ids:
                ids = prompt_ids.setdefault(r.prompt, self.tok(r.prompt, add_special_tokens=False)["input_ids"])
                samples.append(Sample(ids, list(r.completion.token_ids), advantage))
        flat = torch.cat(adv) if adv else torch.zeros(0)
        parts = self.ranks.gather((len(samples), float(flat.abs().sum()), flat.numel()))
        tokens = sum(n for _, _, n in parts)
        return samples, {"algo/kept": sum(k for k, _, _ in parts), "algo/process_weight": weights["process"],
                         "algo/adv_abs_mean": sum(x for _, x, _ in parts) / tokens if tokens else 0.0, **metrics}

    def update_policy(self, samples: list[Sample], index: int) -> dict:
        """Every rank runs the same global minibatch plan (core.distributed.minibatch_plan); when no rank
        kept a sample, none steps and the policy (and its version) stays."""
        lengths = self.ranks.gather([len(s.completion_ids) for s in samples])
        if not any(lengths):
            return {}
        passes = max(-(-len(part) // self.cfg.algo.micro_batch_size) for part in lengths)
        if not self.policy.one_step(sum(map(len, lengths))):   # one step reads its own forward (one_step)
            for s, logp in zip(samples, self.policy.logprobs(samples, passes=passes)):
                s.old_logprobs = logp
        if self.cfg.algo.kl_coef > 0:
            for s, logp in zip(samples, self.policy.logprobs(samples, reference=True, passes=passes)):
                s.ref_logprobs = logp
        generator = torch.Generator().manual_seed(self.cfg.trainer.seed * 100_003 + index)
        metrics = self.policy.update(samples, generator, self.ranks, lengths)
        # each rank's loss-like terms are its share of the global token mean: they add up over ranks
        summed = self.ranks.gather({k: v for k, v in metrics.items() if k not in ("optimizer_steps", "grad_norm")})
        keys = {k for part in summed for k in part}   # a rank that only ran stand-in passes has none
        return metrics | {k: sum(part.get(k, 0.0) for part in summed) for k in sorted(keys)}

    def sync(self) -> dict:
        """Push weights to the engine, then prove it: engine vs trainer log-probs on a fixed text."""
        if self.rollout.version == self.policy.version:
            return {}
        weights = None if self.rollout_shares_policy() else self.policy.weights_for_sync()
        seconds = self.rollout.sync_weights(weights, self.policy.version)
        r = self.cfg.rollout
        prompt = self.task.prompt(self.tok, r.parity_prompt)
        gap = self.rollout.parity_check(self.policy.logprob_fn, prompt, r.parity_completion, r.parity_tolerance)
        self.rollout.sleep()   # the parity check woke the KV cache: the GPU is the trainer's until the next generate
        return {"sync/seconds": seconds, "sync/parity_gap": gap}

    # ------------------------------------------------------------------ helpers
    def rollout_shares_policy(self) -> bool:
        """The HF backend generates with the trainer's own module: a sync moves no tensors."""
        return getattr(self.rollout, "model", None) is self.policy.module

    def _record(self, r: Attempt) -> dict:
        """What the round's metrics need of a rollout (gathered from every rank to compute them).
        wrong_step: whether it has a wrong step by the task's own exact rule (free; None: the task has none)."""
        return {"passed": r.passed, "mean": r.mean or [], "std": r.std or [], "tokens": len(r.completion.token_ids),
                "truncated": r.completion.finish_reason == "length", "steps": len(r.steps),
                "version": r.completion.policy_version, "wrong_step": self.task.has_wrong_step(r.question, r.steps)}

    def rollout_metrics(self, records: list[dict]) -> dict:
        n = len(records)
        procs = [sum(x["mean"]) / len(x["mean"]) for x in records if x["mean"]]
        exact = self.task.first_error is not None   # trace_error: only where the task has an exact step rule
        return {"pass_rate": sum(x["passed"] for x in records) / n,
                **({"trace_error": trace_error([x["passed"] for x in records], [x["wrong_step"] for x in records])}
                   if exact else {}),
                "reward/outcome": sum(x["passed"] for x in records) / n,
                "reward/process": sum(procs) / len(procs) if procs else float("nan"),
                "rollout/tokens": sum(x["tokens"] for x in records),
                "rollout/truncated": sum(x["truncated"] for x in records) / n,
                "rollout/steps_mean": sum(x["steps"] for x in records) / n,
                "policy_version": records[0]["version"]}  # the version that generated them

    @staticmethod
    def _padded_scores(scores: list[tuple[list[float] | None, list[float] | None]]):
        """(mean, std) per trajectory -> padded mu, sigma, step mask; None = no PRM in this run."""
        width = max([len(mean or []) for mean, _ in scores] + [1])
        mu, sigma = torch.ones(len(scores), width), torch.zeros(len(scores), width)
        mask = torch.zeros(len(scores), width, dtype=torch.bool)
        for b, (mean, std) in enumerate(scores):
            if mean is None:
                continue
            k = len(mean)
            mu[b, :k], sigma[b, :k], mask[b, :k] = torch.tensor(mean), torch.tensor(std), True
        return mu, sigma, mask

    @staticmethod
    def _labelled(r: Attempt, mean: list[float]) -> tuple[int, int, list[float]]:
        """(first error, number of steps, PRM step means): what the PRM accuracy metrics need."""
        return r.first_error, len(r.steps), list(mean)

    def _step_accuracy(self, labelled: list[tuple[int, int, list[float]]]) -> float:
        right = total = 0
        for first_error, n_steps, mean in labelled:
            labels = labels_from_first_error(first_error, n_steps)
            for label, score in zip(labels, mean):
                right += int((score >= self.cfg.prm.threshold) == bool(label))
                total += 1
        return right / total if total else float("nan")
