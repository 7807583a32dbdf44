"""Step labels for a search pool (bench/make_search_pool.py) from the rule judge plus the verified answer.

The rule judge alone marks a step wrong only where it writes a false equation, so a sample that reads
the question wrong but computes correctly is "all correct": on SmolLM2's arithmetic samples half the
wrong answers carry no false equation, and a PRM trained on those labels ranks wrong answers above right
ones (bench/RESULTS.md, search). Here the final answer is checked too:

    first_error = the rule judge's first false equation, if any
                  else the last step, if the answer is wrong or missing
                  else -1 (all correct)

The output is a labelled pool for `python -m prm.train pool=jsonl judge=oracle` (the oracle judge reads
these labels through the same ledger as any judge).

    python bench/label_pool_outcome.py outputs/pools/arithmetic.jsonl outputs/pools/arithmetic_labelled.jsonl
"""
from __future__ import annotations

import json
import sys
from collections import Counter

from judges.rule import RuleJudge


def label(rule: RuleJudge, row: dict) -> tuple[int, str]:
    first = rule.judge(row["question"], row["steps"]).first_error
    if first is not None and first >= 0:
        return first, "rule"
    if not row.get("meta", {}).get("correct"):
        return len(row["steps"]) - 1, "outcome"
    return -1, "correct"


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    rule, counts = RuleJudge(), Counter()
    with open(src) as fin, open(dst, "w") as fout:
        for i, line in enumerate(fin):
            row = json.loads(line)
            if "meta" not in row or "correct" not in row["meta"]:
                raise ValueError(f"{src} row {i}: field meta.correct missing (write the pool with make_search_pool.py)")
            row["first_error"], why = label(rule, row)
            counts[why] += 1
            fout.write(json.dumps(row) + "\n")
    print(f"[label] {dst}: {dict(counts)}")


if __name__ == "__main__":
    main()
