"""Best-of-N with another PRM on the very same samples (rl.search_rescore): re-score `python -m rl.search`
best-of-N records under DST, so `python -m rl.search_report DST` and bench/search_prm_diagnostics.py read
them as any search run. The source records are not modified.

    python -m bench.rescore_bon outputs/bench_search/arithmetic outputs/bench_search/arithmetic_outcome_prm \
        --prm outputs/prm_pool_arith_outcome/prm
    python -m bench.rescore_bon outputs/bench_search/chain_prm_min outputs/bench_search/chain_confidence \
        --confidence min --policy chain-tiny     # the policy's own confidence (prm.confidence) on the same samples
    python -m bench.rescore_bon outputs/bench_search/chain_prm_min outputs/bench_search/chain \
        --prm outputs/chain_prm/prm --aggregate last   # the same PRM, the last step's score
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.answers import AnswerChecker
from prm.model import EnsemblePRM
from rl.search_rescore import rescore_best_of_n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="an rl.search out_dir with best_of_n records")
    parser.add_argument("dst", help="where the re-scored records go")
    scorer = parser.add_mutually_exclusive_group(required=True)
    scorer.add_argument("--prm", help="a PRM dir saved by python -m prm.train")
    scorer.add_argument("--confidence", choices=["min", "mean"], help="the policy's own step confidence instead")
    parser.add_argument("--policy", help="--confidence: the policy model (its bare chat-template prompt is used)")
    parser.add_argument("--aggregate", choices=["last", "min", "prod"], help="instead of the records' own")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if args.confidence:
        from core.models import load_model
        from prm.confidence import PolicyConfidence
        if not args.policy:
            parser.error("--confidence needs --policy")
        model, tok = load_model(args.policy, "fp32")
        prm, name = PolicyConfidence(model.eval(), tok, args.confidence, batch_size=args.batch_size), \
            f"confidence_{args.confidence}:{args.policy}"
    else:
        prm, name = EnsemblePRM.load(args.prm), args.prm
        prm.cfg.batch_size = args.batch_size
    checker = AnswerChecker()
    try:
        rescore_best_of_n(Path(args.src), Path(args.dst), prm, name, checker, args.aggregate)
    finally:
        checker.close()


if __name__ == "__main__":
    main()
