"""The policy side of rl.search (and of its pool sampler, rl.sample_pool): the task's problems and
prompts, an rl.engines backend as the search methods' Policy, and per-run seeding."""
from __future__ import annotations

import time
from dataclasses import replace

from core.run import seed_everything
from core.steps import STEP_SEPARATOR
from rl.config import PolicyConfig, RolloutConfig, TaskConfig
from rl.search_methods import Context, Continuation


def load_task(cfg: TaskConfig, data_root: str | None = None):
    """The online loop's task (tasks.registry.make_task, the same prompts and few-shot turns): problems
    [offset, offset + limit) and the task."""
    from tasks.registry import make_task

    end = None if cfg.limit is None else cfg.offset + cfg.limit
    task = make_task(replace(cfg, size=max(cfg.size, end or 0), limit=end), data_root)
    return task.problems[cfg.offset:end], task


class RolloutPolicy:
    """An rl.rollout backend as the search methods' Policy. In one-step mode generation stops at the
    first blank line; the backend keeps the stop string in the text, which is how step_end is read.
    A context may be token ids (the backend then skips tokenization); a step's Continuation carries its
    token ids so the search continues from exactly what was generated (rl.search_methods)."""

    def __init__(self, backend, cfg: RolloutConfig):
        self.backend, self.cfg = backend, cfg
        self.seconds = 0.0
        self.bar = None      # a progress bar per run (run_method): one tick per generation round

    def __call__(self, contexts: list[Context], n: int, one_step: bool, greedy: bool = False
                 ) -> list[list[Continuation]]:
        start = time.perf_counter()
        groups = self.backend.generate(
            contexts, n, self.cfg.step_max_new_tokens if one_step else self.cfg.max_new_tokens,
            temperature=0.0 if greedy else self.cfg.temperature, top_p=self.cfg.top_p,
            stop=[STEP_SEPARATOR] if one_step else None)
        self.seconds += time.perf_counter() - start
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(policy_s=f"{self.seconds:.0f}", refresh=False)
        return [[self._continuation(c, one_step) for c in group] for group in groups]

    def _continuation(self, c, one_step: bool) -> Continuation:
        """In one-step mode only EOS ends the solution: a step cut by step_max_new_tokens is a (long)
        step, not an unanswered final one (treating it as final retired many beams without an answer)."""
        ran = c.forward_tokens
        if not one_step:
            return Continuation(c.text, len(c.token_ids), step_end=False, forward_tokens=ran)
        cut = c.text.find(STEP_SEPARATOR)
        if cut >= 0:
            return Continuation(c.text[:cut], len(c.token_ids), step_end=True, forward_tokens=ran,
                                token_ids=self._step_ids(c.token_ids, c.text[:cut] + STEP_SEPARATOR))
        # cut by the length cap: no separator was generated, so the search appends one as text
        return Continuation(c.text, len(c.token_ids), step_end=c.finish_reason == "length", forward_tokens=ran)

    def _step_ids(self, ids: list[int], step_text: str) -> list[int] | None:
        """The generated ids when they are exactly the step and its separator. A token reaching past the
        separator (e.g. one token for "\\n\\n\\n"; vLLM's text stops at the stop string, its ids do not)
        would carry text the step does not have into the context: None, and that beam goes on from text."""
        tok = getattr(self.backend, "tokenizer", None)
        if tok is None or tok.decode(ids, skip_special_tokens=False) != step_text:
            return None
        return list(ids)


def make_backend(policy: PolicyConfig, rollout: RolloutConfig, seed: int):
    """The policy loaded on policy.device and its backend, built as rl.online builds its own."""
    from core.config import resolve_device
    from core.models import load_model
    from rl.engines import rollout_from_config

    model, tok = load_model(policy.model, policy.dtype)
    model.to(resolve_device(policy.device)).eval()
    return rollout_from_config(rollout, policy, model, tok, seed), tok


def seed_run(seed: int, method: str, n: int) -> None:
    # Per (seed, method, n), so a run's samples do not depend on which methods ran before it (HF backend;
    # the vLLM engine is seeded once per seed at start-up, see make_backend).
    seed_everything(seed * 1_000_003 + sum(map(ord, method)) * 1009 + n)
