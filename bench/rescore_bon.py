"""Best-of-N with another PRM on the very same samples: re-score `python -m rl.search` best-of-N records.

Best-of-N selection depends only on the samples and their step scores, so two PRMs can be compared on
one sample set at no generation cost (beam search and DVTS cannot: the PRM steers what is generated).
Writes records in rl.search's format under DST (step scores, choices and correctness recomputed), so
`python -m rl.search_report DST` and bench/search_prm_diagnostics.py read them as any search run.

    python bench/rescore_bon.py outputs/bench_search/arithmetic outputs/bench_search/arithmetic_outcome_prm \
        --prm outputs/prm_pool_arith_outcome/prm
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from prm.answers import AnswerChecker
from prm.model import EnsemblePRM
from prm.steps import split_steps
from rl.search import choices
from rl.search_methods import Cost, ScoreSpec, SearchOutcome, Solution, canonical_answer


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
    (Path(args.dst) / "records").mkdir(parents=True, exist_ok=True)
    try:
        for path in sorted(Path(args.src, "records").glob("*.jsonl")):
            recs = [json.loads(line) for line in path.open()]
            if recs[0]["method"] != "best_of_n":
                if recs[0]["method"] == "greedy":   # the floor needs no PRM: copied as is
                    shutil.copy(path, Path(args.dst) / "records" / path.name)
                continue
            sols = [[Solution(split_steps(s["text"], fallback=False), s["tokens"], answer=s["answer"],
                              key=canonical_answer(s["answer"])) for s in r["solutions"]] for r in recs]
            flat = [(r["question"], s) for r, group in zip(recs, sols) for s in group if s.steps]
            scores = prm.score([q for q, _ in flat], [s.steps for _, s in flat])
            for (_, sol), sc in zip(flat, scores):
                sol.mean, sol.std = list(sc.mean), list(sc.std)
            specs = [ScoreSpec(recs[0]["aggregate"], b) for b in recs[0]["betas"]]
            selectors = sorted({row["label"].split("/")[1].split(" ")[0] for row in recs[0]["results"]})
            with (Path(args.dst) / "records" / path.name).open("w") as fh:
                for rec, group in zip(recs, sols):
                    rows = choices("best_of_n", SearchOutcome(group, Cost()), rec["n"], selectors, specs)
                    ok = checker.check_many([rec["reference"]] * len(rows), [r["answer"] for r in rows])
                    old_cost = {(r["label"], r["n"]): r["cost"] for r in rec["results"]}
                    for row, good in zip(rows, ok):
                        row["correct"], row["cost"] = good, old_cost[(row["label"], row["n"])]
                    rec["results"] = rows
                    rec["solutions"] = [{**s, "mean": g.mean, "std": g.std} for s, g in zip(rec["solutions"], group)]
                    rec["prm"] = args.prm
                    fh.write(json.dumps(rec) + "\n")
            print(f"[rescore] {path.name}: {len(flat)} samples re-scored", flush=True)
    finally:
        checker.close()


if __name__ == "__main__":
    main()
