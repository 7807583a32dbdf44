"""Chain testbed: step AUROC (pooled, within problem) and first-error F1 at 0.5 of a chain PRM next to the
policy's own confidence, on bench_chain_pool's held-out test samples (chain generator seed 202).

    python -m bench.chain_prm_quality outputs/chain_search_prm/prm --test outputs/bench_chain_pool_v3/test.jsonl --every 4
"""
from __future__ import annotations

import argparse
import json

from core.models import load_model
from prm.confidence import PolicyConfidence
from prm.model import EnsemblePRM
from prm.quality import scorer_quality


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prm")
    ap.add_argument("--test", default="outputs/bench_chain_pool_v3/test.jsonl")
    ap.add_argument("--every", type=int, default=4, help="every k-th problem with all its samples (CPU time)")
    args = ap.parse_args()
    test = [json.loads(line) for line in open(args.test)]
    order = list(dict.fromkeys(t["question"] for t in test))
    keep = set(order[::args.every])
    test = [t for t in test if t["question"] in keep]
    qs, steps, fe = [t["question"] for t in test], [t["steps"] for t in test], [t["first_error"] for t in test]
    prm = EnsemblePRM.load(args.prm)
    prm.cfg.batch_size = 256
    out = {"prm": scorer_quality(qs, fe, [list(s.mean) for s in prm.score(qs, steps)])}
    model, tok = load_model("chain-tiny", "fp32")
    for reduce in ("min", "mean"):
        conf = PolicyConfidence(model.eval(), tok, reduce, batch_size=256)
        out[f"confidence_{reduce}"] = scorer_quality(qs, fe, conf(qs, steps))
    print(f"{len(test)} samples of {len(keep)} problems")
    for name, q in out.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in q.items()))


if __name__ == "__main__":
    main()
