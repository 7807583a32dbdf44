"""bench.implicit_lr_sweep: its runs compose, touch no test problem, and the table reads the later rounds."""

import pytest

from bench import implicit_lr_sweep as sweep
from tests.test_commands import compose_and_validate


def test_each_run_composes_and_evaluates_nothing(tmp_path):
    args = sweep.argparse.Namespace(task="chain_lucky", model="chain-tiny-lucky", task_seed=630000, seed=100,
                                    rounds=10)
    argv = sweep.command(args, "1e-4", tmp_path / "lr1e-4")
    assert argv[1:3] == ["-m", "rl.online"]
    compose_and_validate("rl.online", [f"--config-name={argv[4]}", *argv[5:]])
    assert {"policy_eval.every=0", "algo.implicit_lr=1e-4", "algo.process_source=implicit",
            "task.seed=630000"} <= set(argv)
    assert not any(w.startswith("policy_eval.source=") for w in argv)


def test_the_summary_is_the_mean_of_the_later_rounds():
    metrics = [{"round": 0, "eval/pass": 0.4}] + [
        {"round": k, "implicit/loss": 0.1 * k, "implicit/acc_before": 0.5, "pass_rate": 0.25 * (k % 2)}
        for k in range(1, 5)]
    got = sweep.summary(metrics, later=2)
    assert got["loss"] == pytest.approx(0.35) and got["acc_before"] == 0.5 and got["pass"] == pytest.approx(0.125)
