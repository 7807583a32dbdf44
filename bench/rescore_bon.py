"""Best-of-N with another PRM on the very same samples (rl.search_rescore): re-score `python -m rl.search`
best-of-N records under DST, so `python -m rl.search_report DST` and bench/search_prm_diagnostics.py read
them as any search run. The source records are not modified.

    python bench/rescore_bon.py outputs/bench_search/arithmetic outputs/bench_search/arithmetic_outcome_prm \
        --prm outputs/prm_pool_arith_outcome/prm
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prm.answers import AnswerChecker
from prm.model import EnsemblePRM
from rl.search_rescore import rescore_best_of_n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="an rl.search out_dir with best_of_n records")
    parser.add_argument("dst", help="where the re-scored records go")
    parser.add_argument("--prm", required=True, help="a PRM dir saved by python -m prm.train")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    prm = EnsemblePRM.load(args.prm)
    prm.cfg.batch_size = args.batch_size
    checker = AnswerChecker()
    try:
        rescore_best_of_n(Path(args.src), Path(args.dst), prm, args.prm, checker)
    finally:
        checker.close()


if __name__ == "__main__":
    main()
