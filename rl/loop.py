"""One online round (DESIGN.md section 4), phase by phase:

    generate -> verify -> score -> select -> judge -> prm_update -> advantage -> policy_update -> weight_sync

`OnlineLoop.round()` is the whole algorithm on one screen; the helpers below it do the bookkeeping.
Data parallel (rl/distributed.py, the same code for 1 and N ranks): every rank draws the round's global
batch and keeps its contiguous share of prompts (whole GRPO groups); generate, verify, score and
advantages are local; selection (Eq. 5 per item, the judge budget over the gathered priorities), the
judge (rank 0 labels every rank's picks once through its ledger, then broadcasts the verdicts), the PRM
and policy updates (same steps on every rank, gradients all-reduced) and the metrics are global.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from judges.base import Cost
from prm.data import Trajectory
from prm.selection import select_uncertain, uncertainty_priority
from prm.steps import first_below, labels_from_first_error, split_steps
from rl.algos import compute_advantages, keep_mask, outcome_source, step_end_tokens
from rl.distributed import Ranks, hash_seed
from rl.policy import Sample
from rl.report import PhaseTimer, std_histogram
from rl.rollout import Completion, assert_single_version


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


class OnlineLoop:
    def __init__(self, cfg, task, stream, policy, rollout, learner, judge, ledger, checker, ranks: Ranks | None = None):
        self.cfg, self.task, self.stream, self.policy, self.rollout = cfg, task, stream, policy, rollout
        self.learner, self.judge, self.ledger, self.checker = learner, judge, ledger, checker  # judge, ledger: rank 0
        self.ranks = ranks or Ranks()
        self.tok = policy.tokenizer
        self.on_phase = None  # callback(phase name) when a phase starts (progress display)

    def round(self, index: int) -> tuple[dict, list[float]]:
        cfg, t = self.cfg, PhaseTimer(self.on_phase)
        problems = self.stream.next_batch(cfg.data.prompts_per_round)   # the global batch, on every rank
        first, last = self.ranks.shard_bounds(len(problems))
        with t("generate"):
            rollouts = self.generate(problems[first:last], index, first)
        with t("verify"):
            passed = self.checker.score_solutions([r.reference for r in rollouts], [r.completion.text for r in rollouts],
                                                  cfg.data.fallback_last_number)
            for r, ok in zip(rollouts, passed):
                r.passed = ok
        with t("score"):
            self.score(rollouts)
        with t("select"):
            chosen = self.select(rollouts, index)
        with t("judge"):
            judged, cost = self.judge_selected(rollouts, chosen)
        with t("prm_update"):
            prm_metrics = self.update_prm(rollouts, judged)
        with t("advantage"):
            samples, adv_metrics = self.advantages(rollouts)
        with t("policy_update"):
            policy_metrics = self.update_policy(samples, index)
        with t("weight_sync"):
            sync_metrics = self.sync()
        everyone = self.ranks.gather({"rollouts": [self._record(r) for r in rollouts], "chosen": sum(chosen),
                                      "judged": len(judged), "seconds": t.seconds})
        records = [x for part in everyone for x in part["rollouts"]]
        stds = [s for x in records for s in x["std"]]
        selected = sum(part["chosen"] for part in everyone)
        seconds = {k: max(part["seconds"][k] for part in everyone) for k in t.seconds}  # the slowest rank's
        metrics = {"round": index, **self.rollout_metrics(records), **adv_metrics, **prm_metrics,
                   "select/candidates": len(records), "select/selected": selected,
                   "select/fraction": selected / len(records), "judge/calls": cost.calls,
                   "judge/tokens": cost.tokens, "judge/seconds": cost.seconds,
                   "judge/labels": sum(part["judged"] for part in everyone),
                   **{f"policy/{k}": v for k, v in policy_metrics.items()}, **sync_metrics,
                   **std_histogram(stds), **seconds}
        metrics["timing/round"] = sum(v for k, v in seconds.items())
        return metrics, stds

    # ------------------------------------------------------------------ phases
    def generate(self, problems, index: int = 0, first: int = 0) -> list[Rollout]:
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
        return [Rollout(first + g, p.question, p.reference_answer, prompt, c, split_steps(c.text) or [c.text.strip() or "(empty)"])
                for g, (p, prompt, group) in enumerate(zip(problems, prompts, groups)) for c in group]

    def score(self, rollouts: list[Rollout]) -> None:
        if self.learner is None:
            return
        scores = self.learner.score([r.question for r in rollouts], [r.steps for r in rollouts])
        for r, s in zip(rollouts, scores):
            r.mean, r.std = list(s.mean), list(s.std)

    def select(self, rollouts: list[Rollout], index: int) -> list[bool]:
        """uncertain: Eq. 5; all: judge everything; none: judge nothing; random: as many as Eq. 5 picks.
        A per-round budget keeps the most uncertain (random mode: a random subset). Eq. 5 is per item;
        the count, the random draw and the budget are decided over every rank's items (gathered in rank
        order, the order one rank would have), and each rank keeps its own slice of the decision."""
        mode, budget = self.cfg.select.mode, self.cfg.select.budget_per_round
        if self.learner is None or mode in ("all", "none"):
            local, priority = [mode != "none"] * len(rollouts), [0.0] * len(rollouts)
        else:
            mu, sigma, mask = self._padded(rollouts)
            local = select_uncertain(mu, sigma, mask, self.cfg.prm.delta_pred, self.cfg.prm.delta_std).tolist()
            priority = uncertainty_priority(mu, sigma, mask).tolist()
        parts = self.ranks.gather((local, priority))
        chosen = [c for part, _ in parts for c in part]
        priority = [p for _, part in parts for p in part]
        if mode == "random" and self.learner is not None:  # equal budget: the count Eq. 5 picks, drawn uniformly
            rng = random.Random(f"{self.cfg.trainer.seed}:select:{index}")
            picked = set(rng.sample(range(len(chosen)), sum(chosen)))
            chosen, priority = [i in picked for i in range(len(chosen))], [rng.random() for _ in chosen]
        if budget is not None and sum(chosen) > budget:
            ranked = set(sorted((i for i, c in enumerate(chosen) if c), key=lambda i: -priority[i])[:budget])
            chosen = [i in ranked for i in range(len(chosen))]
        offset = sum(len(part) for part, _ in parts[:self.ranks.rank])
        return chosen[offset:offset + len(rollouts)]

    def judge_selected(self, rollouts: list[Rollout], chosen: list[bool]) -> tuple[list[Rollout], Cost]:
        """Labels go through the ledger (persisted before they are returned; repeats cost nothing).
        Rank 0 owns the judge and the ledger: it labels every rank's picks in one call (an item picked
        on two ranks is paid once) and broadcasts the verdicts; the cost is the round's, on every rank."""
        picked = [r for r, c in zip(rollouts, chosen) if c]
        parts = self.ranks.gather([(r.question, r.steps) for r in picked])
        items = [item for part in parts for item in part]
        verdicts = None
        if self.ranks.is_main and items:
            verdicts = self.ledger.label(self.judge, items)
        verdicts = self.ranks.broadcast(verdicts) or []
        cost = sum((v.cost for v in verdicts if v is not None and not v.from_ledger), Cost())
        offset = sum(len(part) for part in parts[:self.ranks.rank])
        for r, v in zip(picked, verdicts[offset:offset + len(picked)]):
            r.first_error = v.first_error if v is not None else None
        return [r for r in picked if r.first_error is not None], cost

    def update_prm(self, rollouts: list[Rollout], judged: list[Rollout]) -> dict:
        """PRM accuracy on judged data before/after the update; `before` re-scores for the rewards.
        Every rank steps (a rank without labels trains on a zero BCE term: the regulariser only), with
        the BCE normalised over all ranks' labels, so N ranks take the step one rank would."""
        if self.learner is None:
            return {}
        before = [x for part in self.ranks.gather([self._labelled(r, r.mean) for r in judged]) for x in part]
        if not before:  # no rank has a label (a global decision: every rank returns here)
            return {}
        agree = sum(first_below(mean, self.cfg.prm.threshold) == k for k, _, mean in before)
        out = {"prm/agreement": agree / len(before),
               "prm/acc_before": self._step_accuracy(before)}
        if self.cfg.prm_update == "none":
            return out
        trajectories = [Trajectory(r.question, r.steps, r.first_error, r.reference) for r in judged]
        if not trajectories:  # nothing of ours to learn from: an unselected stand-in keeps the step collective
            r = rollouts[0]
            trajectories, select = [Trajectory(r.question, r.steps, None, r.reference)], [False]
        else:
            select = False
        update = self.learner.update(trajectories, select=select, reduce_weight=self._sum_over_ranks)
        losses = self.ranks.gather((update["loss"], update.get("labelled", 0)))
        out.update({"prm/loss": sum(x for x, _ in losses) / len(losses), "prm/trained": sum(n for _, n in losses)})
        after = self.learner.score([r.question for r in judged], [r.steps for r in judged]) if judged else []
        after = [x for part in self.ranks.gather([self._labelled(r, s.mean) for r, s in zip(judged, after)])
                 for x in part]
        out["prm/acc_after"] = self._step_accuracy(after)
        if self.cfg.prm_update == "before":  # rewards come from the updated PRM
            self.score(rollouts)
        return out

    def _sum_over_ranks(self, value: float) -> tuple[float, int]:
        return sum(self.ranks.gather(value)), self.ranks.world

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
        reduce = None if self.ranks.world == 1 else (lambda stats: [sum(x) for x in zip(*self.ranks.gather(stats))])
        adv = compute_advantages(sources, weights, groups, lengths, a.advantage, reduce)
        keep = keep_mask(groups, [r.passed for r in rollouts], [r.completion.finish_reason == "length" for r in rollouts],
                         a.filter_groups, a.filter_truncated)
        prompt_ids = {}
        samples = []
        for r, advantage, k in zip(rollouts, adv, keep):
            if k and r.completion.token_ids:
                ids = prompt_ids.setdefault(r.prompt, self.tok(r.prompt, add_special_tokens=False)["input_ids"])
                samples.append(Sample(ids, list(r.completion.token_ids), advantage))
        flat = torch.cat(adv) if adv else torch.zeros(0)
        parts = self.ranks.gather((len(samples), float(flat.abs().sum()), flat.numel()))
        tokens = sum(n for _, _, n in parts)
        return samples, {"algo/kept": sum(k for k, _, _ in parts),
                         "algo/adv_abs_mean": sum(a for _, a, _ in parts) / tokens if tokens else 0.0}

    def update_policy(self, samples: list[Sample], index: int) -> dict:
        """Every rank runs the same global minibatch plan (rl.distributed.minibatch_plan); when no rank
        kept a sample, none steps and the policy (and its version) stays."""
        lengths = self.ranks.gather([len(s.completion_ids) for s in samples])
        if not any(lengths):
            return {}
        passes = max(-(-len(part) // self.cfg.algo.micro_batch_size) for part in lengths)
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
        return {"sync/seconds": seconds, "sync/parity_gap": gap}

    # ------------------------------------------------------------------ helpers
    def rollout_shares_policy(self) -> bool:
        """The HF backend generates with the trainer's own module: a sync moves no tensors."""
        return getattr(self.rollout, "model", None) is self.policy.module

    @staticmethod
    def _record(r: Rollout) -> dict:
        """What the round's metrics need of a rollout (gathered from every rank to compute them)."""
        return {"passed": r.passed, "mean": r.mean or [], "std": r.std or [], "tokens": len(r.completion.token_ids),
                "truncated": r.completion.finish_reason == "length", "steps": len(r.steps),
                "version": r.completion.policy_version}

    def rollout_metrics(self, records: list[dict]) -> dict:
        n = len(records)
        procs = [sum(x["mean"]) / len(x["mean"]) for x in records if x["mean"]]
        return {"pass_rate": sum(x["passed"] for x in records) / n,
                "reward/outcome": sum(x["passed"] for x in records) / n,
                "reward/process": sum(procs) / len(procs) if procs else float("nan"),
                "rollout/tokens": sum(x["tokens"] for x in records),
                "rollout/truncated": sum(x["truncated"] for x in records) / n,
                "rollout/steps_mean": sum(x["steps"] for x in records) / n,
                "policy_version": records[0]["version"]}  # the version that generated them

    def _padded(self, rollouts: list[Rollout]):
        width = max([len(r.mean) for r in rollouts] + [1])
        mu, sigma = torch.ones(len(rollouts), width), torch.zeros(len(rollouts), width)
        mask = torch.zeros(len(rollouts), width, dtype=torch.bool)
        for b, r in enumerate(rollouts):
            k = len(r.mean)
            mu[b, :k], sigma[b, :k], mask[b, :k] = torch.tensor(r.mean), torch.tensor(r.std), True
        return mu, sigma, mask

    @staticmethod
    def _labelled(r: Rollout, mean: list[float]) -> tuple[int, int, list[float]]:
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
