"""One PPO micro-step at a real model's shape, its peak memory against the memory plan's prediction.

    python -m bench.ppo_step_memory --model qwen2.5-1.5b --micro 8 --tokens 712 --completion 512   # on cuda
    python -m bench.ppo_step_memory --model qwen2.5-1.5b --layers 2 --hidden 64 --device cpu       # a dry run

A randomly initialised model of the built-in architecture (core/memory_plan.py; nothing downloaded), bf16 on
cuda with gradient checkpointing, one forward + backward of rl.policy's loss path (completion log-probs in
chunks, PPO-clip) on `micro` sequences of `tokens` tokens. On cuda it measures the peak allocated memory of
the forward/backward above the weights already resident, and compares it with the plan's activations +
logits + gradients of the same shape; it prints one JSON line and exits 1 when the measurement exceeds the
prediction by more than `--slack` (a fraction). On the CPU it runs the step and reports the plan only.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import torch

from core.memory_plan import BUILTIN, GB, activation_bytes, logit_bytes
from rl.algos import ppo_clip_loss
from rl.policy import completion_logprobs


def model_of(arch, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
                         num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                         num_key_value_heads=arch.kv_heads, tie_word_embeddings=arch.tied,
                         max_position_embeddings=32768)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-1.5b", choices=sorted(BUILTIN))
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=712)
    parser.add_argument("--completion", type=int, default=512)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--slack", type=float, default=0.25)
    args = parser.parse_args(argv)
    arch = BUILTIN[args.model]
    if args.layers or args.hidden:   # a scaled-down dry run: the vocabulary (the logits) stays full size
        hidden = args.hidden or arch.hidden
        arch = replace(arch, layers=args.layers or arch.layers, hidden=hidden, intermediate=2 * hidden,
                       heads=4, kv_heads=2, head_dim=None)
    cuda = args.device.startswith("cuda")
    dtype, nbytes = (torch.bfloat16, 2) if cuda else (torch.float32, 4)
    model = model_of(arch, dtype).to(args.device)
    model.gradient_checkpointing_enable()
    model.train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, arch.vocab, (args.micro, args.tokens), generator=gen).to(args.device)
    length = args.completion
    if cuda:
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    logits = model(input_ids=ids, logits_to_keep=length + 1).logits[:, :-1]
    logp = completion_logprobs(logits, ids[:, -length:], 1.0)
    mask = torch.ones_like(logp)
    advantages = torch.randn(logp.shape, generator=gen).to(args.device)
    loss, _ = ppo_clip_loss(logp, logp.detach(), advantages, mask, 0.2)
    loss.backward()
    planned = (activation_bytes(arch, args.micro * args.tokens, nbytes, True)
               + logit_bytes(arch, args.micro * (length + 1), nbytes) + arch.params() * nbytes) / GB
    out = {"model": args.model, "device": args.device, "params": arch.params(), "micro": args.micro,
           "tokens": args.tokens, "planned_gb": round(planned, 3), "loss_finite": bool(torch.isfinite(loss))}
    ok = out["loss_finite"]
    if cuda:
        torch.cuda.synchronize()
        out["measured_gb"] = round((torch.cuda.max_memory_allocated() - resident) / GB, 3)
        ok = ok and out["measured_gb"] <= planned * (1 + args.slack)
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
