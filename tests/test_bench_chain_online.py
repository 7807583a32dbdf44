"""bench/bench_chain_online.py's held-out pass summaries, pinned by hand."""
import math
from types import SimpleNamespace

from bench import bench_chain_online


def run(evals: dict, calls_per_round: int) -> dict:
    rounds = max(evals)
    return {"eval": evals, "eval_greedy": {r: 0.5 for r in evals},
            "labels": [calls_per_round * (k + 1) for k in range(rounds)]}


def test_rounds_and_labels_to_a_gain_over_the_runs_own_start():
    c = run({0: 0.40, 5: 0.43, 10: 0.46, 15: 0.44}, calls_per_round=100)
    assert bench_chain_online.to_target(c, 0.05) == (10.0, 1000.0)   # 0.46 >= 0.40 + 0.05 first at round 10
    never = bench_chain_online.to_target(c, 0.10)
    assert math.isnan(never[0]) and math.isnan(never[1])


def test_eval_table_pairs_the_end_and_the_mean_over_evaluations():
    args = SimpleNamespace(target_gain=0.05, rounds=10, arms=["a", "b"])
    data = {"a": {0: run({0: 0.5, 5: 0.6, 10: 0.7}, 10), 1: run({0: 0.4, 5: 0.4, 10: 0.5}, 10)},
            "b": {0: run({0: 0.5, 5: 0.5, 10: 0.5}, 0), 1: run({0: 0.4, 5: 0.5, 10: 0.4}, 0)}}
    lines = bench_chain_online.eval_table(args, data)
    row_a = next(line for line in lines if line.startswith("| a (2)"))
    assert "| 0.600 ± " in row_a and "| 2/2 |" in row_a        # round-10 mean (0.7 + 0.5) / 2; both gained 0.05
    paired = next(line for line in lines if line.startswith("| a - b, paired"))
    # ends: (0.7 - 0.5, 0.5 - 0.4) -> mean 0.150; means over rounds 5, 10: (0.65 - 0.5, 0.45 - 0.45) -> 0.075
    assert "0.150 ± " in paired and "0.075 ± " in paired


def test_trace_table_pairs_the_last_round():
    args = SimpleNamespace(rounds=10, arms=["outcome", "judge"])
    data = {"outcome": {0: {"trace": {0: 0.2, 10: 0.4}}, 1: {"trace": {0: 0.1, 10: 0.3}}},
            "judge": {0: {"trace": {0: 0.2, 10: 0.1}}, 1: {"trace": {0: 0.1, 10: 0.2}}}}
    lines = bench_chain_online.trace_table(args, data)
    assert next(line for line in lines if line.startswith("| outcome (2)")).endswith("| 0.350 ± 0.635 |")
    # paired ends: 0.4 - 0.1, 0.3 - 0.2 -> mean 0.200
    assert "| 0.200 ± " in next(line for line in lines if line.startswith("| outcome - judge, paired"))
    assert bench_chain_online.trace_table(args, {"a": {0: {"trace": {}}}}) == []
