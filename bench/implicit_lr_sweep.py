"""PRIME's implicit PRM on a testbed task: which learning rate lets it learn, chosen without any test problem.

    OMP_NUM_THREADS=1 python -m bench.implicit_lr_sweep --task chain_lucky --model chain-tiny-lucky \
        --lrs 1e-6 1e-5 1e-4 1e-3 --rounds 10 --out outputs/implicit_lr_chain_lucky

One `python -m rl.online --config-name online_chain` run per learning rate: the `implicit_c` arm of claim (c)'s
stage 2 (bench.bench_chain_online.ARMS), on training problems only (task.seed), no policy evaluation. PRIME's
order makes each round a validation of the implicit PRM: the round's token rewards and its cross-entropy on the
round's verified outcomes are taken on samples it has not trained on, before its update (`implicit/loss`,
`implicit/acc_before`: the sign of its outcome reward against the verifier). The learning rate with the lowest
mean loss over the later rounds wins; the table goes to stdout and <out>/table.md.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench.bench_chain_online import ARMS
from bench.online_grid import load

REPO = Path(__file__).resolve().parents[1]


def command(args, lr: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "rl.online", "--config-name", "online_chain", f"task={args.task}",
            f"policy.model={args.model}", f"prm.backbone={args.model}", f"task.seed={args.task_seed}",
            f"trainer.seed={args.seed}", f"rounds={args.rounds}", "policy_eval.every=0", "replay.heldout_size=0",
            "trainer.resume=auto", "trainer.progress=false", "plot=false", "keep_checkpoints=1",
            *ARMS["implicit_c"], f"algo.implicit_lr={lr}", f"trainer.out_dir={out.resolve()}"]


def summary(metrics: list[dict], later: int) -> dict[str, float]:
    """Means over the last `later` rounds of the implicit PRM's pre-update loss and accuracy, and the pass rate."""
    rows = [m for m in metrics if m.get("round", 0) >= 1][-later:]
    mean = lambda key: sum(m[key] for m in rows) / len(rows)   # noqa: E731
    return {"loss": mean("implicit/loss"), "acc_before": mean("implicit/acc_before"), "pass": mean("pass_rate")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="chain_lucky")
    ap.add_argument("--model", default="chain-tiny-lucky")
    ap.add_argument("--lrs", nargs="+", default=["1e-6", "1e-5", "1e-4", "1e-3"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--later", type=int, default=5, help="rounds at the end whose mean decides")
    ap.add_argument("--seed", type=int, default=100, help="trainer seed (none of a claim's)")
    ap.add_argument("--task-seed", type=int, default=630000, help="the training problems' generator seed")
    ap.add_argument("--out", type=Path, default=Path("outputs/implicit_lr"))
    args = ap.parse_args(argv)
    results = {}
    for lr in args.lrs:
        out = args.out / f"lr{lr}"
        out.mkdir(parents=True, exist_ok=True)
        with (out / "run.log").open("a") as log:
            subprocess.run(command(args, lr, out), check=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        results[lr] = summary(load(out), args.later)
        print(f"[implicit_lr] {lr}: {results[lr]}", flush=True)
    best = min(results, key=lambda lr: results[lr]["loss"])
    lines = [f"{args.task}, {args.rounds} rounds, trainer seed {args.seed}, training problems of generator seed "
             f"{args.task_seed}; means over rounds {args.rounds - args.later + 1}-{args.rounds}", "",
             "| implicit_lr | CE on the round's outcomes, before its update | sign agrees with the verifier | training pass |",
             "|---|---:|---:|---:|"]
    lines += [f"| {lr}{' (lowest loss)' if lr == best else ''} | {r['loss']:.4f} | {r['acc_before']:.3f} | {r['pass']:.3f} |"
              for lr, r in results.items()]
    text = "\n".join(lines)
    print(text)
    (args.out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
