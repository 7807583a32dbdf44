"""The online loop end to end on the tiny model: exact resume, and a mid-round kill re-pays no label."""
import math
import sqlite3

import pytest

from prm.config import PRMConfig
from core.config import TrainerConfig
from rl.config import AlgoConfig, OnlineConfig, PolicyConfig, RolloutConfig, SelectConfig, TaskConfig
from rl.loop import OnlineLoop
from rl.online import run


def tiny_config(out_dir, rounds=2, **kw) -> OnlineConfig:
    return OnlineConfig(
        rounds=rounds, plot=False,
        policy=PolicyConfig(model="tiny-random-llama", dtype="fp32", train_mode="full", lr=1e-3),
        rollout=RolloutConfig(n=4, max_new_tokens=10, batch_size=16),
        algo=AlgoConfig(filter_groups=False, mini_batch_size=8, micro_batch_size=4, **kw.pop("algo", {})),
        task=TaskConfig(prompts_per_round=3, size=40),
        select=SelectConfig(mode=kw.pop("mode", "uncertain")),
        prm=PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=4, batch_size=8, head_lr=1e-2),
        trainer=TrainerConfig(out_dir=str(out_dir), resume="auto", progress=False, seed=3), **kw)


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(("timing/", "sync/seconds", "judge/seconds"))}


def assert_same(a: dict, b: dict):
    a, b = comparable(a), comparable(b)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k


def ledger_rows(out_dir) -> int:
    with sqlite3.connect(out_dir / "ledger.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]


def test_resume_matches_uninterrupted_run(tmp_path):
    full = run(tiny_config(tmp_path / "a"))
    first = run(tiny_config(tmp_path / "b"), stop_after=1)    # the process "stops" after round 1
    assert len(first) == 1 and (tmp_path / "b" / "checkpoints" / "round_0001" / "state.pt").is_file()
    resumed = run(tiny_config(tmp_path / "b"))                 # resume=auto picks round 1, runs round 2
    assert [m["round"] for m in resumed] == [1, 2]
    assert_same(full[0], resumed[0])
    assert_same(full[1], resumed[1])                           # the next round's metrics match exactly
    assert full[1]["policy_version"] == 1 and full[1]["judge/calls"] > 0
    assert ledger_rows(tmp_path / "a") == ledger_rows(tmp_path / "b")


def test_process_warmup_uses_the_outcome_alone_then_adds_the_process_source(tmp_path):
    """Round 1 of a 1-round warm-up draws the same advantages as outcome-only RL on the same rollouts
    (its PRM still learns), and differs from process rewards from the start; round 2 adds them."""
    warm = run(tiny_config(tmp_path / "warm", algo={"process_warmup_rounds": 1}))
    both = run(tiny_config(tmp_path / "both", rounds=1))
    outcome = run(tiny_config(tmp_path / "outcome", rounds=1, algo={"reward": "outcome"}))
    assert [m["algo/process_weight"] for m in warm] == [0.0, 1.0] and both[0]["algo/process_weight"] == 1.0
    assert warm[0]["pass_rate"] == both[0]["pass_rate"] == outcome[0]["pass_rate"]   # the same rollouts
    assert warm[0]["algo/adv_abs_mean"] == pytest.approx(outcome[0]["algo/adv_abs_mean"], rel=1e-6)
    assert warm[0]["algo/adv_abs_mean"] != pytest.approx(both[0]["algo/adv_abs_mean"], rel=1e-3)
    assert warm[0]["judge/calls"] == both[0]["judge/calls"] > 0                        # the PRM learns during warm-up


def test_judged_step_values():
    from rl.loop import Attempt
    from rl.process import judged_step_values
    a = Attempt(0, "q", "1", "p", None, ["s1", "s2", "s3", "The answer is 1."])
    assert judged_step_values(a) == []                              # not judged
    a.first_error = -1
    assert judged_step_values(a) == [1.0, 1.0, 1.0, 1.0]
    a.first_error = 1
    assert judged_step_values(a) == [1.0, 0.0, 0.0, 0.0]


def test_judge_process_source_does_not_depend_on_the_prm(tmp_path):
    """Two PRMs initialised differently give different process advantages from their scores, and the same
    ones with algo.process_source=judge (the judge's labels of the same rollouts)."""
    def adv(name, source, prm_seed):
        cfg = tiny_config(tmp_path / name, rounds=1, mode="all", schedule="serial",
                          algo={"reward": "process", "advantage": "rloo", "process_source": source})
        cfg.prm.seed = prm_seed
        return run(cfg)[0]["algo/adv_abs_mean"]
    assert adv("j0", "judge", 0) == pytest.approx(adv("j1", "judge", 1), rel=1e-6)
    assert adv("p0", "prm", 0) != pytest.approx(adv("p1", "prm", 1), rel=1e-3)


def test_kill_mid_round_resumes_without_repaying_labels(tmp_path, monkeypatch):
    out = tmp_path / "run"
    reference = run(tiny_config(tmp_path / "ref", mode="all"))
    run(tiny_config(out, mode="all"), stop_after=1)
    paid_after_round1 = ledger_rows(out)

    def killed(self, samples, index):  # the process dies after round 2 judged, before the policy update
        raise KeyboardInterrupt

    monkeypatch.setattr(OnlineLoop, "update_policy", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(out, mode="all"))
    paid_in_killed_round = ledger_rows(out) - paid_after_round1
    assert paid_in_killed_round > 0                       # the labels were persisted before use
    monkeypatch.undo()
    resumed = run(tiny_config(out, mode="all"))
    assert resumed[1]["judge/calls"] == 0                 # replayed round 2: every label from the ledger
    assert resumed[1]["judge/ledger_hits"] == resumed[1]["select/selected"] > 0   # ... and counted as hits
    assert (reference[1]["judge/calls"] + reference[1]["judge/ledger_hits"] + reference[1]["judge/repeats"]
            == reference[1]["select/selected"])
    assert resumed[1]["judge/labels"] == reference[1]["judge/labels"]
    assert ledger_rows(out) == ledger_rows(tmp_path / "ref")  # nothing lost, nothing paid twice
    assert resumed[1]["pass_rate"] == reference[1]["pass_rate"]


def test_summary_table_is_legible_in_a_log(capsys):
    """Printed to a pipe or a file (make run > log), every column keeps its digits."""
    from rl.report import summary_table
    summary_table([{"round": 1, "pass_rate": 0.6944, "judge/calls": 36, "prm/heldout_auroc": 0.95,
                    "prm/heldout_f1": 0.746, "timing/round": 65.8}], "title")
    out = capsys.readouterr().out
    assert all(cell in out for cell in ("0.694", "36", "0.950", "0.746", "65.8")) and "…" not in out


def test_summary_table_says_what_each_number_measures(capsys):
    """Pass on the round's own prompts is labelled so, held-out pass beside it; judge calls paid apart
    from ledger hits; the PRM's F1 at its tuned threshold; and that the run is one seed."""
    from rl.report import summary_table
    summary_table([{"round": 0, "eval/pass": 0.412},
                   {"round": 5, "pass_rate": 0.5, "eval/pass": 0.457, "judge/calls": 12, "judge/ledger_hits": 7,
                    "prm/heldout_f1": 0.61, "prm/heldout_tau": 0.73}], "title", seed=3)
    out = capsys.readouterr().out
    for header in ("pass (train prompts)", "held-out pass", "judge paid", "ledger hits", "held-out F1 (tuned tau)"):
        assert header in out, header
    assert all(cell in out for cell in ("0.412", "0.457", "12", "7", "0.73"))
    assert "one seed (trainer.seed=3): no interval" in out
