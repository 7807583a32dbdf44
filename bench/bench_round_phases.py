"""One chain-testbed online round, phase by phase: the frozen-feature PRM (heads on cached features) vs the
trained-backbone PRM, side by side in one run.

    OMP_NUM_THREADS=1 python -m bench.bench_round_phases --rounds 4 --out outputs/bench_round_phases \
        [--before DIR] [--repeats 1] [-- extra overrides for every run]

Each (arm, checkout, repeat) is one `python -m rl.online --config-name online_chain` process in a fresh out
dir, run one after another (arms interleaved, so a change in the machine's load hits every arm alike), with
schedule=serial (each phase's seconds are its own, not shared with the overlap schedule's worker thread)
and no policy evaluation. A phase's figure is its `timing/<phase>` seconds (rl.loop.OnlineLoop.report),
the mean over rounds 2.. (round 1 also pays one-time costs: the held-out set's first features, lazy set-up).
`--before DIR` runs the same arms on another checkout (e.g. `git worktree add DIR <commit>`): a change is
measured before / after in the same run. The markdown table goes to stdout and <out>/table.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("generate", "verify", "score", "select", "judge", "prm_update", "rescore", "advantage", "policy_update",
          "weight_sync", "wait_prm", "round")   # rl.loop.PHASES, then the round's wall time
ARMS = {"frozen": [],                                  # configs/prm/chain_tiny.yaml as it is
        "trained": ["prm.train_mode=full", "prm.step_features=hidden_policy_logprob", "prm.lr=1e-3"]}


def command(arm: str, rounds: int, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "rl.online", "--config-name", "online_chain", f"rounds={rounds}",
            f"trainer.out_dir={out.resolve()}", "trainer.progress=false", "plot=false", "policy_eval.every=0",
            "schedule=serial", *ARMS[arm], *extra]


def plan(args) -> list[tuple[str, Path, str, int]]:
    """(column label, checkout, arm, repeat), interleaved: repeat by repeat, arm by arm, before then after."""
    trees = ([("before", Path(args.before).resolve())] if args.before else []) + [("after" if args.before else "", REPO)]
    return [(f"{arm} ({tag})" if tag else arm, tree, arm, r)
            for r in range(args.repeats) for arm in args.arms for tag, tree in trees]


def run_one(cmd: list[str], tree: Path, out: Path) -> list[dict]:
    """Run in `tree` (its own code first on the path: an editable install may point elsewhere); its metrics."""
    shutil.rmtree(out, ignore_errors=True)   # a fresh run: trainer.resume=auto would continue an old one
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
    print("$", " ".join(cmd), f"(in {tree})", flush=True)
    with (out / "run.log").open("w") as log:
        subprocess.run(cmd, check=True, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def phase_seconds(metrics: list[dict], skip: int = 1) -> dict[str, float]:
    """Mean seconds per round of each logged phase over the rounds after the first `skip`."""
    rows = [m for m in metrics if m.get("round", 0) > skip] or [m for m in metrics if m.get("round", 0) >= 1]
    keys = {k[len("timing/"):] for m in rows for k in m if k.startswith("timing/")}
    return {k: sum(m.get(f"timing/{k}", 0.0) for m in rows) / len(rows) for k in keys}


def table(columns: dict[str, dict[str, float]], ratio: tuple[str, str] | None) -> str:
    """Markdown: a row per phase (every phase some column logged), a column per label, and `ratio`'s
    first column over its second."""
    names = list(columns)
    logged = {k for c in columns.values() for k in c}
    phases = [p for p in PHASES if p in logged] + sorted(logged - set(PHASES))
    head = ["phase (s / round)", *names] + ([f"{ratio[0]} / {ratio[1]}"] if ratio else [])
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for p in phases:
        cells = [f"{columns[n].get(p, 0.0):.2f}" for n in names]
        if ratio:
            a, b = columns[ratio[0]].get(p, 0.0), columns[ratio[1]].get(p, 0.0)
            cells.append(f"{a / b:.2f}x" if b > 0 else "")
        lines.append(f"| {'**' + p + '**' if p in ('prm_update', 'round') else p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--before", default=None, help="another checkout: the same arms run on its code too")
    p.add_argument("--out", default="outputs/bench_round_phases")
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    runs: dict[str, list[dict[str, float]]] = {}
    for label, tree, arm, r in plan(args):
        out = Path(args.out) / f"{label.replace(' ', '_').replace('(', '').replace(')', '')}_r{r}"
        runs.setdefault(label, []).append(phase_seconds(run_one(command(arm, args.rounds, out, extra), tree, out)))
    columns = {label: {k: sum(r.get(k, 0.0) for r in rs) / len(rs) for k in {k for r in rs for k in r}}
               for label, rs in runs.items()}
    ratio = (f"{args.arms[0]} (before)", f"{args.arms[0]} (after)") if args.before else (
        ("trained", "frozen") if set(args.arms) == set(ARMS) else None)
    text = (f"online_chain, {args.rounds} rounds, {args.repeats} repeat(s); seconds per round, mean over rounds 2-"
            f"{args.rounds}\n\n" + table(columns, ratio))
    print(text)
    (Path(args.out) / "table.md").write_text(text + "\n")
    (Path(args.out) / "result.json").write_text(json.dumps(columns, indent=2) + "\n")


if __name__ == "__main__":
    main()
