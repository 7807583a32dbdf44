"""A peer check of rl.online's policy update on the chain testbed: on-policy GRPO in one screen, no prmloop code
but the problem generator (the TRL-peer idea of bench_trl_peer.py, for RL).

    PRMLOOP_CACHE=... python -m bench.chain_rl_peer --lr 1e-4 --steps 60 --out outputs/chain_rl_peer/lr1e-4.jsonl

Each step: `--prompts` problems x `--n` samples at T = 1 from chain-tiny, reward 1 when "The answer is N."
names the reference, advantage (r - mean) / (std + 1e-6) within each problem's group, loss = -token mean
of advantage x log-prob, one Adam step. Every `--eval-every` steps: pass rate of 4 samples and of greedy
decoding on 128 fixed problems of another seed. Used to tell whether the testbed policy can be moved by RL at
all, and at which lr and batch (bench/RESULTS.md, the online loop on the chain testbed).
"""
import argparse
import json
import random
import re
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.models import cache_root
from tasks.chain.policy import model_dir
from tasks.chain.problems import ChainSpec, chain_problems

ANSWER = re.compile(r"The answer is (-?\d+)\.")
MAX_NEW_TOKENS = 100   # an 8-operation solution is ~90 tokens (configs/online_chain.yaml)


def sample(model, tok, problems, n: int, greedy: bool = False) -> list[tuple[list[int], list[int], float]]:
    """(prompt ids, completion ids through EOS, reward) for n samples of each problem, group members adjacent."""
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "user", "content": p.question}], tokenize=False,
                                     add_generation_prompt=True) for p in problems for _ in range(n)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": 1.0, "top_k": 0}  # T = 1, full
        out = model.generate(**enc, **sampling, max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    rows = []
    for i, completion in enumerate(out[:, enc.input_ids.shape[1]:].tolist()):
        ids = completion[:completion.index(tok.eos_token_id) + 1] if tok.eos_token_id in completion else completion
        found = ANSWER.search(tok.decode(ids, skip_special_tokens=True))
        reward = float(bool(found) and found.group(1) == str(problems[i // n].reference_answer).strip())
        rows.append((enc.input_ids[i][enc.attention_mask[i].bool()].tolist(), ids, reward))
    return rows


def grpo_step(model, tok, opt, rows, n: int) -> float:
    rewards = torch.tensor([r for _, _, r in rows]).view(-1, n)
    adv = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)).view(-1)
    width = max(len(p) + len(c) for p, c, _ in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    attention, mask = torch.zeros_like(ids), torch.zeros(len(rows), width)
    for i, (p, c, _) in enumerate(rows):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        attention[i, :len(p) + len(c)] = 1
        mask[i, len(p):len(p) + len(c)] = 1
    model.train()
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    mask = mask[:, 1:]
    loss = -(logp * adv[:, None] * mask).sum() / mask.sum()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    model.eval()
    return float(rewards.mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=15)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    path = str(model_dir(cache_root()))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    train, heldout = chain_problems(1000 + args.seed, 4000, ChainSpec()), chain_problems(999, 128, ChainSpec())
    rng, start = random.Random(args.seed), time.time()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as log:
        for step in range(args.steps + 1):
            if step % args.eval_every == 0 or step == args.steps:
                sampled, greedy = sample(model, tok, heldout, 4), sample(model, tok, heldout, 1, greedy=True)
                record = {"step": step, "heldout_sampled": sum(r for *_, r in sampled) / len(sampled),
                          "heldout_greedy": sum(r for *_, r in greedy) / len(greedy), "seconds": time.time() - start}
                print(record, flush=True)
                log.write(json.dumps(record) + "\n")
                log.flush()
            if step < args.steps:
                passed = grpo_step(model, tok, opt, sample(model, tok, rng.sample(train, args.prompts), args.n), args.n)
                if step % 5 == 0:
                    print(f"step {step}: train pass {passed:.3f}", flush=True)


if __name__ == "__main__":
    main()
