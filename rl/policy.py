"""The policy trainer: LoRA (peft) or full fine-tuning behind a DeepSpeed engine (or plain torch).

    trainer = PolicyTrainer(cfg.policy, cfg.algo, cfg.trainer)
    logp = trainer.logprobs(samples)                # no grad: old (and reference) log-probs
    metrics = trainer.update(samples)               # PPO-clip epochs over minibatches
    trainer.weights_for_sync()                      # full HF-named tensors (LoRA merged) for vLLM
A `Sample` is one completion with its prompt tokens, per-token advantages and old log-probs.
The reference policy for the KL term is the base model: LoRA gets it for free (adapter disabled);
full fine-tuning keeps a frozen copy only when kl_coef > 0.
"""
from __future__ import annotations

import copy
import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from prm.checkpoint_io import deepspeed_weights_only, load_state, load_weights, save_state, save_weights
from prm.config import TrainerConfig
from prm.models import load_model
from rl.algos import ppo_clip_loss


@dataclass
class Sample:
    prompt_ids: list[int]
    completion_ids: list[int]
    advantages: torch.Tensor | None = None    # [len(completion_ids)]
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None


class PolicyTrainer:
    def __init__(self, policy_cfg, algo_cfg, trainer: TrainerConfig):
        self.cfg, self.algo, self.trainer = policy_cfg, algo_cfg, trainer
        model, self.tokenizer = load_model(policy_cfg.model, policy_cfg.dtype, seed=trainer.seed)
        self.reference = None
        if policy_cfg.train_mode == "lora":
            from peft import LoraConfig, get_peft_model
            model = get_peft_model(model, LoraConfig(r=policy_cfg.lora_r, lora_alpha=policy_cfg.lora_alpha,
                                                     lora_dropout=0.0, target_modules=list(policy_cfg.lora_targets)))
            # LoRA params in the model dtype: one dtype through every step (no mixed-dtype casts)
        elif policy_cfg.train_mode == "full":
            if algo_cfg.kl_coef > 0:
                self.reference = copy.deepcopy(model).eval().requires_grad_(False)
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

            from prm.update import init_distributed
            init_distributed()
            ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                         "zero_optimization": {"stage": trainer.zero_stage}, "gradient_clipping": policy_cfg.grad_clip,
                         "bf16": {"enabled": policy_cfg.dtype in ("bf16", "bfloat16")},
                         "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9}
            self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
            deepspeed_weights_only(self.engine)  # its own loader would run pickles
        else:
            self.optimizer = optimizer
        self.version = 0  # bumped by every update; rollouts carry the version they were sampled from
        # the policy being optimised is the one sampled from: logits / T (veRL/OpenRLHF do the same)
        self.temperature = 1.0

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
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for b, seq in enumerate(seqs):
            ids[b, width - len(seq):], attn[b, width - len(seq):] = torch.tensor(seq), 1
        positions = (attn.cumsum(1) - 1).clamp(min=0)  # as generate numbers them: padding does not shift
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions,
                       logits_to_keep=length + 1).logits[:, :-1].float() / temperature
        targets = ids[:, width - length:]
        token_logp = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)  # [B, length]
        mask = torch.zeros(len(samples), length)
        rows = []
        for b, s in enumerate(samples):  # row b's completion is its last n tokens: shift it to the left edge
            n = len(s.completion_ids)
            rows.append(torch.nn.functional.pad(token_logp[b, length - n:], (0, length - n)))
            mask[b, :n] = 1
        return torch.stack(rows), mask

    @torch.no_grad()
    def logprobs(self, samples: list[Sample], reference: bool = False, temperature: float | None = None) -> list[torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        out = []
        ctx = self.model.disable_adapter() if (reference and self.reference is None) else contextlib.nullcontext()
        model = self.reference if (reference and self.reference is not None) else self.model
        with ctx:
            for start in range(0, len(samples), self.algo.micro_batch_size):
                chunk = samples[start:start + self.algo.micro_batch_size]
                logp, _ = self._forward_logprobs(model, chunk, temperature or self.temperature)
                out += [logp[b, :len(s.completion_ids)] for b, s in enumerate(chunk)]
        self.model.train(was_training)
        return out

    def logprob_fn(self, prompt: str, completion_ids: list[int]) -> list[float]:
        """Trainer side of the rollout parity check."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return self.logprobs([Sample(ids, list(completion_ids))], temperature=1.0)[0].tolist()  # raw, like the engine

    # ------------------------------------------------------------------ PPO update
    def update(self, samples: list[Sample], generator: torch.Generator | None = None) -> dict[str, float]:
        """ppo_epochs passes; each shuffles the samples into minibatches (one optimizer step each),
        split into micro-batches whose losses sum to the minibatch's token-level mean."""
        self.model.train()
        totals: dict[str, float] = {}
        steps = 0
        for _ in range(self.algo.ppo_epochs):
            order = torch.randperm(len(samples), generator=generator).tolist()
            for start in range(0, len(order), self.algo.mini_batch_size):
                mini = [samples[i] for i in order[start:start + self.algo.mini_batch_size]]
                metrics = self._step(mini)
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v
                steps += 1
        self.version += 1
        return {k: v / max(steps, 1) for k, v in totals.items()} | {"optimizer_steps": steps}

    def _step(self, mini: list[Sample]) -> dict[str, float]:
        num_tokens = sum(len(s.completion_ids) for s in mini)
        micro = self.algo.micro_batch_size
        chunks = [mini[i:i + micro] for i in range(0, len(mini), micro)]
        model = self.engine if self.engine is not None else self.model
        sums: dict[str, float] = {}
        if self.engine is None:
            self.optimizer.zero_grad(set_to_none=True)
        for c, chunk in enumerate(chunks):
            logp, mask = self._forward_logprobs(model, chunk, self.temperature)
            pad = lambda name: torch.nn.utils.rnn.pad_sequence([getattr(s, name) for s in chunk], batch_first=True)  # noqa: E731
            ref = pad("ref_logprobs") if chunk[0].ref_logprobs is not None else None
            loss, metrics = ppo_clip_loss(logp, pad("old_logprobs"), pad("advantages"), mask, self.algo.clip_eps,
                                          ref, self.algo.kl_coef, num_tokens)
            if self.engine is not None:  # accumulate over micro-batches, step once per minibatch
                self.engine.set_gradient_accumulation_boundary(c == len(chunks) - 1)
                self.engine.backward(loss)
                self.engine.step()
            else:
                loss.backward()
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            for k, v in metrics.items():  # each is already divided by the minibatch token count
                sums[k] = sums.get(k, 0.0) + v
        if self.engine is None:
            params = [p for p in self.model.parameters() if p.requires_grad]
            sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))
            self.optimizer.step()
        return sums

    # ------------------------------------------------------------------ sync + checkpoints
    @torch.no_grad()
    def weights_for_sync(self) -> list[tuple[str, torch.Tensor]]:
        """Full weights with the base model's HF names (what vLLM's load_weights expects); LoRA is
        merged into a copy of each adapted weight, so the trainer's own weights stay untouched."""
        if self.cfg.train_mode != "lora":
            return [(n, p.detach().clone()) for n, p in self.model.state_dict().items()]
        base = self.model.get_base_model()
        out = []
        for name, module in base.named_modules():
            if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):
                weight = module.base_layer.weight.detach().clone()
                for adapter in module.active_adapters:
                    weight += module.get_delta_weight(adapter).to(weight.dtype)
                out.append((f"{name}.weight", weight))
        adapted = {n for n, _ in out}
        for name, tensor in base.state_dict().items():
            clean = name.replace(".base_layer", "")
            if "lora_" not in name and clean not in adapted:
                out.append((clean, tensor.detach().clone()))
        return out

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
