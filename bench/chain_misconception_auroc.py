"""Search on the chain testbed: how the search scorers rank the policy's confident misconception. Over every step
"a * 7 = v" / "a * 8 = v" of the best-of-N samples that bench_search.py's chain settings recorded (the
PRM's scores in chain_prm_min, the policy's confidence on the same samples in chain_confidence): AUROC of
each scorer for telling a right product from a wrong one, and the mean score of each (equation checked
on its own operands).

    python -m bench.chain_misconception_auroc [--root outputs/bench_search]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from prm.quality import pair_auroc
from tasks.chain.labels import STEP, apply


def product_pairs(steps: list[str], scores) -> list[tuple[bool, float]]:
    """(is the product right, score) for every "a * 7 = v" / "a * 8 = v" step of one solution."""
    out = []
    for step, score in zip(steps, scores):
        m = STEP.fullmatch(step.strip())   # the chain judge's own reading of a step
        if m and m.group(2) == "*" and m.group(3) in ("7", "8"):
            out.append((apply(int(m.group(1)), "*", int(m.group(3))) == int(m.group(4)), score))
    return out


def product_auroc(steps: list[list[str]], scores: list) -> float:
    """AUROC of a step scorer for a right x 7 / x 8 product against a wrong one, over many solutions."""
    return pair_auroc([(int(ok), s) for st, sc in zip(steps, scores) for ok, s in product_pairs(st, sc)])


def pairs(root: Path, setting: str):
    out = []
    for path in sorted((root / setting / "records").glob("best_of_n-*.jsonl")):
        for line in path.open():
            rec = json.loads(line)
            for s in rec["solutions"]:
                out += product_pairs(s["text"].split("\n\n"), s["mean"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("outputs/bench_search"))
    args = ap.parse_args()
    for name, setting in (("PRM", "chain_prm_min"), ("confidence (min token)", "chain_confidence")):
        rows = pairs(args.root, setting)
        right = [s for ok, s in rows if ok]
        wrong = [s for ok, s in rows if not ok]
        print(f"{name}: {len(right)} right / {len(wrong)} wrong x7 / x8 steps; "
              f"AUROC {pair_auroc([(int(ok), s) for ok, s in rows]):.3f}; "
              f"mean score right {sum(right) / len(right):.3f}, wrong {sum(wrong) / len(wrong):.3f}")


if __name__ == "__main__":
    main()
