"""PRIME's implicit process reward (arXiv 2502.01456; docs/method.md, Dense-reward baselines).

An implicit PRM is a causal LM pi_phi next to a frozen reference pi_ref, both starting as the initial policy
(PRIME: the SFT model). Its reward of completion token t of y given the prompt x is

    r_phi(y_t) = beta * log( pi_phi(y_t | x, y_<t) / pi_ref(y_t | x, y_<t) )

and its outcome reward the sum over the completion, r_phi(y) = sum_t r_phi(y_t). It learns with the
cross-entropy on outcome labels o in {0, 1}:

    L_CE = -[ o * log sigmoid(r_phi(y)) + (1 - o) * log(1 - sigmoid(r_phi(y))) ]

so that step-level credit comes without step labels. PRIME's online order: the round's token rewards are
taken from the implicit PRM as it is, then it takes one update on the round's verified outcomes.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from core.checkpoint_io import load_state, load_weights, save_state, save_weights


def completion_logprobs(model, prompts: list[list[int]], completions: list[list[int]],
                        pad_id: int) -> list[torch.Tensor]:
    """log pi(y_t | x, y_<t) of every completion token, one tensor per sample (right-padded batch)."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    device = next(model.parameters()).device
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros_like(ids)
    for b, seq in enumerate(seqs):
        ids[b, :len(seq)], attn[b, :len(seq)] = torch.tensor(seq, device=device), 1
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    token_logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)   # [B, width - 1]
    # token j of the sequence is predicted at position j - 1: the completion's at len(p) - 1 .. len(p + c) - 2
    return [token_logp[b, len(p) - 1:len(p) + len(c) - 1] for b, (p, c) in enumerate(zip(prompts, completions))]


class ImplicitPRM:
    def __init__(self, model, reference, pad_id: int, beta: float = 0.05, lr: float = 1e-6,
                 micro_batch_size: int = 16):
        if beta <= 0:
            raise ValueError(f"implicit PRM: beta must be > 0, got {beta}")
        self.model, self.reference, self.pad_id = model, reference.eval(), pad_id
        self.beta, self.micro_batch_size = beta, micro_batch_size
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)

    def _log_ratios(self, prompts, completions) -> list[torch.Tensor]:
        with torch.no_grad():
            ref = completion_logprobs(self.reference, prompts, completions, self.pad_id)
        return [a - b for a, b in zip(completion_logprobs(self.model, prompts, completions, self.pad_id), ref)]

    def _chunks(self, n: int) -> list[range]:
        return [range(i, min(i + self.micro_batch_size, n)) for i in range(0, n, self.micro_batch_size)]

    @torch.no_grad()
    def token_rewards(self, prompts: list[list[int]], completions: list[list[int]]) -> list[torch.Tensor]:
        """beta * log(pi_phi / pi_ref) per completion token (an empty completion: an empty tensor)."""
        self.model.eval()
        out: list[torch.Tensor] = []
        for idx in self._chunks(len(prompts)):
            ratios = self._log_ratios([prompts[i] for i in idx], [completions[i] for i in idx])
            out += [self.beta * r.float().cpu() for r in ratios]
        return out

    def update(self, prompts: list[list[int]], completions: list[list[int]], outcomes: list[float]) -> dict:
        """One optimizer step of L_CE averaged over the samples (micro-batches accumulate)."""
        keep = [i for i, c in enumerate(completions) if c]
        if not keep:
            return {}
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total, right = 0.0, 0
        for idx in self._chunks(len(keep)):
            rows = [keep[i] for i in idx]
            ratios = self._log_ratios([prompts[i] for i in rows], [completions[i] for i in rows])
            reward = self.beta * torch.stack([r.sum() for r in ratios])
            target = torch.tensor([float(outcomes[i]) for i in rows], device=reward.device)
            loss = F.binary_cross_entropy_with_logits(reward, target, reduction="sum") / len(keep)
            loss.backward()
            total += float(loss.detach())
            right += int(((reward.detach() > 0).float() == target).sum())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.model.eval()
        return {"loss": total, "acc_before": right / len(keep)}

    @classmethod
    def from_policy(cls, policy_cfg, algo_cfg, seed: int, device) -> ImplicitPRM:
        """pi_phi and pi_ref: two copies of the initial policy (the model policy_cfg names), on `device`."""
        import copy

        from core.models import load_model

        model, tok = load_model(policy_cfg.model, policy_cfg.dtype, seed=seed)
        model.to(device)
        return cls(model, copy.deepcopy(model), tok.pad_token_id, algo_cfg.implicit_beta, algo_cfg.implicit_lr,
                   algo_cfg.micro_batch_size)

    # ---- checkpoints: safetensors weights + a weights_only optimizer state, never code ----------------------
    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        save_weights(self.model.state_dict(), path / "model.safetensors")
        save_state(self.optimizer.state_dict(), path / "optimizer.pt")

    def load(self, path: Path) -> None:
        self.model.load_state_dict(load_weights(path / "model.safetensors"))
        self.optimizer.load_state_dict(load_state(path / "optimizer.pt"))
