"""The policy trainer: LoRA (peft) or full fine-tuning behind a DeepSpeed engine (or plain torch).

    trainer = PolicyTrainer(cfg.policy, cfg.algo, cfg.trainer)
    logp = trainer.logprobs(samples)                # no grad: old (unless one_step) and reference log-probs
    metrics = trainer.update(samples)               # PPO-clip epochs over minibatches
    trainer.weights_for_sync()                      # HF-named full tensors, one at a time (LoRA merged)
A `Sample` is one completion with its prompt tokens, per-token advantages and old log-probs.
The reference policy for the KL term is the base model: LoRA gets it for free (adapter disabled);
full fine-tuning keeps a frozen copy only when kl_coef > 0.
Device: policy.device (auto = cuda:LOCAL_RANK with a GPU, else cpu) holds the model, the reference
copy and every batch the trainer builds (ids, masks, advantages, old/reference log-probs).
Data parallel (core/distributed.py): `update(samples, generator, ranks, lengths)` runs the global
minibatch plan, so every rank takes the same optimizer steps and the same number of forward/backward
passes (zero-loss passes where it has no share); the loss is a token mean over the whole minibatch
across ranks, so N ranks compute the gradient one rank would on the union of their samples.
"""
from __future__ import annotations

import copy
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.utils.checkpoint

from core.checkpoint_io import deepspeed_weights_only, load_state, load_weights, save_state, save_weights
from core.config import TrainerConfig
from core.models import load_model
from rl.algos import ppo_clip_loss
from core.distributed import deepspeed_args
from core.distributed import Ranks, minibatch_plan
from core.config import resolve_device


@dataclass
class Sample:
    prompt_ids: list[int]
    completion_ids: list[int]
    advantages: torch.Tensor | None = None    # [len(completion_ids)]
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None


LOGPROB_CHUNK_BYTES = 2 ** 28   # fp32 temporaries of one chunk of positions (256 MiB)


def _chunk_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    return (logits.float() / temperature).log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)


def completion_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T)[target] per position, [B, L] from logits [B, L, V] in the model's dtype.

    The fp32 upcast, the division and the log-softmax run on chunks of positions (LOGPROB_CHUNK_BYTES of
    fp32 each), never on a full-vocabulary fp32 copy of the whole micro-batch (2.5 GB at 8 x 512 positions
    and 151,936 tokens). With autograd each chunk is checkpointed: backward recomputes its fp32
    temporaries instead of keeping them. Row-wise operations on the same rows: the values (and gradients)
    of computing it all at once."""
    rows = max(1, LOGPROB_CHUNK_BYTES // (4 * logits.shape[-1]))
    grad = torch.is_grad_enabled() and logits.requires_grad
    out = []
    for b in range(logits.shape[0]):
        for start in range(0, logits.shape[1], rows):
            piece, want = logits[b, start:start + rows], targets[b, start:start + rows]
            out.append(torch.utils.checkpoint.checkpoint(_chunk_logprobs, piece, want, temperature,
                                                         use_reentrant=False) if grad
                       else _chunk_logprobs(piece, want, temperature))
    return torch.cat(out).view(targets.shape)


class PolicyTrainer:
    def __init__(self, policy_cfg, algo_cfg, trainer: TrainerConfig):
        self.cfg, self.algo, self.trainer = policy_cfg, algo_cfg, trainer
        model, self.tokenizer = load_model(policy_cfg.model, policy_cfg.dtype, seed=trainer.seed)
        self.device = torch.device(resolve_device(policy_cfg.device))
        model.to(self.device)
        self.reference = None
        self.zero_stage = policy_cfg.zero_stage
        partitioned = trainer.deepspeed and self.zero_stage == 3
        if policy_cfg.train_mode == "lora":
            from peft import LoraConfig, get_peft_model
            with torch.random.fork_rng(devices=[]):   # the adapters' init from the run seed, on every rank
                torch.manual_seed(trainer.seed)
                lora = LoraConfig(r=policy_cfg.lora_r, lora_alpha=policy_cfg.lora_alpha, lora_dropout=0.0,
                                  target_modules=list(policy_cfg.lora_targets))
                model = get_peft_model(model, lora)
            # LoRA params in the model dtype: one dtype through every step (no mixed-dtype casts)
        elif policy_cfg.train_mode == "full":
            if algo_cfg.kl_coef > 0 and not partitioned:   # ZeRO-3: partitioned below, like the policy
                self.reference = copy.deepcopy(model).eval().requires_grad_(False)  # on self.device
        else:
            raise ValueError(f"policy.train_mode must be lora or full, got {policy_cfg.train_mode!r}")
        if policy_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=policy_cfg.lr, weight_decay=policy_cfg.weight_decay)
        self.engine = None
        if trainer.deepspeed:
            import deepspeed

            from core.distributed import init_distributed
            init_distributed(self.trainer.dist_timeout_min)
            ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                         "zero_optimization": {"stage": self.zero_stage}, "gradient_clipping": policy_cfg.grad_clip,
                         "bf16": {"enabled": policy_cfg.dtype in ("bf16", "bfloat16")},
                         "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9}
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                args=deepspeed_args(str(self.device)), model=model, optimizer=optimizer, config=ds_config)
            deepspeed_weights_only(self.engine)  # its own loader would run pickles
            if policy_cfg.train_mode == "full" and algo_cfg.kl_coef > 0 and partitioned:
                self.reference = self._partitioned_reference(ds_config)
        else:
            self.optimizer = optimizer
        self.version = 0  # bumped by every update; rollouts carry the version they were sampled from
        # the policy being optimised is the one sampled from: logits / T (veRL/OpenRLHF do the same)
        self.temperature = 1.0

    def _partitioned_reference(self, ds_config: dict):
        """The initial policy as a frozen DeepSpeed ZeRO-3 model (no optimizer: OpenRLHF's reference): each
        rank holds 1/N of it and its forwards gather layer by layer, where a copy would be a full replica."""
        import deepspeed

        reference, _ = load_model(self.cfg.model, self.cfg.dtype, seed=self.trainer.seed)   # the same start
        reference.to(self.device).eval().requires_grad_(False)
        config = {k: v for k, v in ds_config.items() if k not in ("gradient_clipping", "zero_allow_untested_optimizer")}
        engine, *_ = deepspeed.initialize(args=deepspeed_args(str(self.device)), model=reference, config=config)
        return engine.module

    @property
    def module(self):
        return self.model

    # ------------------------------------------------------------------ log-probs
    def _forward_logprobs(self, model, samples: list[Sample], temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded batch -> (log p of each completion token [B, L], completion mask [B, L]).

        Left padding puts every completion at the right end, so the LM head and the log-softmax run
        on the last L + 1 positions only (the prompt is ~5x longer than an arithmetic answer)."""
        pad = self.tokenizer.pad_token_id
        seqs = [s.prompt_ids + s.completion_ids for s in samples]
        width, length = max(map(len, seqs)), max(len(s.completion_ids) for s in samples)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long, device=self.device)
        attn = torch.zeros_like(ids)
        for b, seq in enumerate(seqs):
            ids[b, width - len(seq):], attn[b, width - len(seq):] = torch.tensor(seq, device=self.device), 1
        positions = (attn.cumsum(1) - 1).clamp(min=0)  # as generate numbers them: padding does not shift
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions,
                       logits_to_keep=length + 1).logits[:, :-1]
        token_logp = completion_logprobs(logits, ids[:, width - length:], temperature)  # [B, length]
        mask = torch.zeros(len(samples), length, device=self.device)
        rows = []
        for b, s in enumerate(samples):  # row b's completion is its last n tokens: shift it to the left edge
            n = len(s.completion_ids)
            rows.append(torch.nn.functional.pad(token_logp[b, length - n:], (0, length - n)))
            mask[b, :n] = 1
        return torch.stack(rows), mask

    @torch.no_grad()
    def logprobs(self, samples: list[Sample], reference: bool = False, temperature: float | None = None,
                 passes: int = 0) -> list[torch.Tensor]:
        """Per-sample log-probs (no grad), in micro-batches. `passes`: under ZeRO-3 every forward gathers
        parameters collectively, so a rank with fewer micro-batches than others pads with stand-in passes."""
        was_training = self.model.training
        self.model.eval()
        out = []
        ctx = self.model.disable_adapter() if (reference and self.reference is None) else contextlib.nullcontext()
        model = self.reference if (reference and self.reference is not None) else self.model
        micro = self.algo.micro_batch_size
        chunks = [samples[i:i + micro] for i in range(0, len(samples), micro)]
        if self.zero_stage == 3:
            chunks += [[]] * (passes - len(chunks))
        with ctx:
            for chunk in chunks:
                logp, _ = self._forward_logprobs(model, chunk or [self._stand_in()], temperature or self.temperature)
                out += [logp[b, :len(s.completion_ids)] for b, s in enumerate(chunk)]
        self.model.train(was_training)
        return out

    def logprob_fn(self, prompt: str, completion_ids: list[int]) -> list[float]:
        """Trainer side of the rollout parity check."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return self.logprobs([Sample(ids, list(completion_ids))], temperature=1.0)[0].tolist()  # raw, like the engine

    # ------------------------------------------------------------------ PPO update
    def one_step(self, samples: int) -> bool:
        """Whether an update of `samples` (over all ranks) is a single optimizer step (one epoch, one minibatch).
        Then the weights that sampled are the ones the step's forward runs, so the old log-probs are that
        forward's own, detached (TRL's rule for num_iterations == 1): the ratio is exactly 1 and no separate
        no-grad pass is needed. Samples without old_logprobs take this path in the loss."""
        return self.algo.ppo_epochs == 1 and samples <= self.algo.mini_batch_size

    def update(self, samples: list[Sample], generator: torch.Generator | None = None, ranks: Ranks | None = None,
               lengths: list[list[int]] | None = None) -> dict[str, float]:
        """ppo_epochs passes over the global minibatch plan (core.distributed.minibatch_plan: the shuffle
        one process would make of every rank's samples), one optimizer step per minibatch on every
        rank; each minibatch is split into micro-batches whose losses sum to its token-level mean.
        `lengths` (every rank's completion lengths) comes from the caller's gather; one rank: ours."""
        ranks = ranks or Ranks()
        lengths = lengths if lengths is not None else [[len(s.completion_ids) for s in samples]]
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        plan = minibatch_plan(lengths, self.algo.mini_batch_size, self.algo.micro_batch_size, self.algo.ppo_epochs,
                              generator)
        if len(plan) > 1 and any(s.old_logprobs is None for s in samples):
            raise ValueError(f"{len(plan)} optimizer steps on samples without old_logprobs: only a single step "
                             "may read its own forward as the old policy (PolicyTrainer.one_step)")
        self.model.train()
        totals: dict[str, float] = {}
        for mini in plan:
            mine = [samples[i] for i in mini["per_rank"][ranks.rank]]
            metrics = self._step(mine, mini["tokens"], mini["micro_steps"], ranks.world)
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v
        if plan:
            self.version += 1
        return {k: v / max(len(plan), 1) for k, v in totals.items()} | {"optimizer_steps": len(plan)}

    def _step(self, mine: list[Sample], num_tokens: int, micro_steps: int, world: int) -> dict[str, float]:
        """One optimizer step. `mine` is this rank's part of the minibatch (maybe empty), `num_tokens`
        the whole minibatch's token count. DeepSpeed averages gradients over ranks, so each rank's loss
        is scaled by `world`: the average of the ranks' sums is then the global token mean."""
        micro = self.algo.micro_batch_size
        chunks = [mine[i:i + micro] for i in range(0, len(mine), micro)]
        chunks += [[]] * (micro_steps - len(chunks))  # zero-loss passes: the collectives line up
        model = self.engine if self.engine is not None else self.model
        sums: dict[str, float] = {}
        if self.engine is None:
            self.optimizer.zero_grad(set_to_none=True)
        for c, chunk in enumerate(chunks):
            loss, metrics = self._chunk_loss(model, chunk, num_tokens)
            loss = loss * world
            if self.engine is not None:  # accumulate over micro-batches, step once per minibatch
                self.engine.set_gradient_accumulation_boundary(c == len(chunks) - 1)
                self.engine.backward(loss)
                self.engine.step()
            else:
                loss.backward()
            sums["loss"] = sums.get("loss", 0.0) + loss.item() / world
            for k, v in metrics.items():  # each is already divided by the minibatch token count
                sums[k] = sums.get(k, 0.0) + v
        if self.engine is None:
            params = [p for p in self.model.parameters() if p.requires_grad]
            sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))
            self.optimizer.step()
        return sums

    def _stand_in(self) -> Sample:
        """A one-token sample for a rank with nothing to process: keeps its collective forwards in step."""
        eos = self.tokenizer.eos_token_id or 0
        return Sample([eos], [eos])

    def _chunk_loss(self, model, chunk: list[Sample], num_tokens: int) -> tuple[torch.Tensor, dict[str, float]]:
        if not chunk:  # a forward through the whole model whose loss is an exact 0 in the graph
            logp, _ = self._forward_logprobs(model, [self._stand_in()], self.temperature)
            return logp.sum() * 0.0, {}
        logp, mask = self._forward_logprobs(model, chunk, self.temperature)
        pad = lambda name: torch.nn.utils.rnn.pad_sequence(  # noqa: E731
            [getattr(s, name).to(self.device) for s in chunk], batch_first=True)
        ref = pad("ref_logprobs") if chunk[0].ref_logprobs is not None else None
        old = pad("old_logprobs") if chunk[0].old_logprobs is not None else logp.detach()   # see one_step
        return ppo_clip_loss(logp, old, pad("advantages"), mask, self.algo.clip_eps, ref, self.algo.kl_coef,
                             num_tokens)

    # ------------------------------------------------------------------ sync + checkpoints
    @torch.no_grad()
    def weights_for_sync(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The full weights with the base model's HF names (what vLLM's load_weights expects), one
        tensor at a time: under ZeRO-3 each parameter is gathered only while it is handed over, and a
        LoRA-adapted weight is merged into a temporary of that one matrix (base + B A). Peak extra
        memory is one weight, never a copy of the model. Every rank must iterate it (the gathers are
        collectives). A yielded tensor is valid until the next one is requested: consumers copy it."""
        if self.cfg.train_mode != "lora":
            yield from self._plain_weights(self.model)
            return
        base = self.model.get_base_model()
        for name, module in base.named_modules():
            if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):
                params = [p for p in module.parameters()]
                with self._gathered(params):
                    weight = module.base_layer.weight.detach().clone()
                    for adapter in module.active_adapters:
                        weight += module.get_delta_weight(adapter).to(weight.dtype)
                yield f"{name}.weight", weight
                if getattr(module.base_layer, "bias", None) is not None:
                    with self._gathered([module.base_layer.bias]):
                        yield f"{name}.bias", module.base_layer.bias.detach()
        yield from ((n, t) for n, t in self._plain_weights(base) if "lora_" not in n and ".base_layer." not in n)

    def _plain_weights(self, model) -> Iterator[tuple[str, torch.Tensor]]:
        """Parameters (tied ones under each name, as a state_dict has them) and persistent buffers."""
        keys = set(model.state_dict().keys())
        for name, param in model.named_parameters(remove_duplicate=False):
            with self._gathered([param]):
                yield name, param.detach()
        for name, buffer in model.named_buffers():
            if name in keys:   # persistent only: rotary tables are recomputed by the engine
                yield name, buffer

    def _gathered(self, params):
        """Under ZeRO-3 the full tensors of `params` for the duration of the block (a collective)."""
        if self.engine is not None and self.zero_stage == 3:
            import deepspeed
            return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        return contextlib.nullcontext()

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.engine is not None:
            self.engine.save_checkpoint(str(path), tag="policy", client_state={"version": self.version},
                                        exclude_frozen_parameters=self.cfg.train_mode == "lora")
        else:  # weights as safetensors; optimizer state and version read back with weights_only=True
            save_weights(self.model.state_dict(), path / "model.safetensors")
            save_state({"optimizer": self.optimizer.state_dict(), "version": self.version}, path / "policy.pt")

    def load(self, path: Path) -> None:
        if self.engine is not None:
            _, state = self.engine.load_checkpoint(str(path), tag="policy", load_module_strict=False)
            self.version = state["version"]
        else:
            self.model.load_state_dict(load_weights(path / "model.safetensors"))
            state = load_state(path / "policy.pt")
            self.optimizer.load_state_dict(state["optimizer"])
            self.version = state["version"]
