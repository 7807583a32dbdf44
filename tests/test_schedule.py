"""Round schedules (rl.schedule): the overlap schedule changes time, not results."""
import threading
import time

import pytest
import torch

from core.config import ConfigError
from rl.loop import OnlineLoop
from rl.online import build
from rl import schedule
from rl.schedule import effective_schedule, run_rounds
from tests.test_rl_loop import comparable, tiny_config


def run_loop(out_dir, schedule: str, rounds: int = 3):
    cfg = tiny_config(out_dir, rounds=rounds, schedule=schedule)
    loop, _ = build(cfg)
    done = list(run_rounds(loop, range(1, rounds + 1), effective_schedule(cfg)))
    loop.checker.close()
    return done, loop


def test_overlap_gives_the_serial_labels_weights_and_metrics(tmp_path, monkeypatch):
    threads, rng_moved = [], []
    original = OnlineLoop.learn_prm

    def watched(self, work):  # where the back half ran, and whether it drew on the global torch RNG
        before = torch.get_rng_state()
        threads.append(threading.current_thread().name)
        original(self, work)
        rng_moved.append(not torch.equal(before, torch.get_rng_state()))
    monkeypatch.setattr(OnlineLoop, "learn_prm", watched)
    serial, serial_loop = run_loop(tmp_path / "serial", "serial")
    assert not any(rng_moved) and threads == ["MainThread"] * 3   # serial: nothing else ran meanwhile
    threads.clear()
    # the overlap run's judge holds on until the foreground has either scored the next round or started to
    # wait for this back half: a schedule that scored before joining would then be caught every time, not
    # only when the threads happen to race
    ready, judge_selected, score, join = threading.Event(), OnlineLoop.judge_selected, OnlineLoop.score, schedule._join
    monkeypatch.setattr(OnlineLoop, "judge_selected",
                        lambda self, *a: (ready.clear(), ready.wait(120), judge_selected(self, *a))[-1])
    monkeypatch.setattr(OnlineLoop, "score", lambda self, rollouts: (score(self, rollouts), ready.set())[0])
    monkeypatch.setattr(schedule, "_join", lambda *a: (ready.set(), join(*a))[-1])
    overlap, overlap_loop = run_loop(tmp_path / "overlap", "overlap")
    assert all(name.startswith("prm-back") for name in threads) and len(threads) == 3

    assert sum(d.metrics["judge/labels"] for d in serial) > 0 and serial[-1].metrics["policy_version"] == 2
    for a, b in zip(serial, overlap):
        assert comparable(a.metrics) == comparable(b.metrics)          # exactly, not approximately
        assert a.data_position == b.data_position
        assert torch.equal(a.rng["torch"], b.rng["torch"]) and a.rng["python"] == b.rng["python"]
        assert "timing/wait_prm" in b.metrics and "timing/wait_prm" not in a.metrics
    for mine, theirs in ((serial_loop.policy.module, overlap_loop.policy.module),
                         (serial_loop.learner.prm, overlap_loop.learner.prm)):
        sd_a, sd_b = mine.state_dict(), theirs.state_dict()
        assert sd_a.keys() == sd_b.keys()
        assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    serial_loop.ledger.export_jsonl(tmp_path / "serial.jsonl")
    overlap_loop.ledger.export_jsonl(tmp_path / "overlap.jsonl")
    assert (tmp_path / "serial.jsonl").read_text() == (tmp_path / "overlap.jsonl").read_text() != ""


def test_round_times_partition_the_wall_time(tmp_path, monkeypatch):
    """timing/round covers the round's foreground phases and its wait, and the rounds' times never add up
    to more than the run's wall time (a back half counted into the wall twice would, with this slow judge)."""
    judge_selected = OnlineLoop.judge_selected
    monkeypatch.setattr(OnlineLoop, "judge_selected", lambda self, *a: time.sleep(0.5) or judge_selected(self, *a))
    cfg = tiny_config(tmp_path / "run", rounds=3, schedule="overlap")
    loop, _ = build(cfg)
    start = time.perf_counter()
    done = list(run_rounds(loop, range(1, 4), "overlap"))
    wall = time.perf_counter() - start
    foreground = ("generate", "verify", "score", "select", "advantage", "policy_update", "weight_sync", "wait_prm")
    for d in done:
        assert d.metrics["timing/round"] >= sum(d.metrics[f"timing/{p}"] for p in foreground)
        assert d.metrics["timing/judge"] >= 0.5                      # busy time, wherever it ran
    assert sum(d.metrics["timing/round"] for d in done) <= wall


def test_the_back_half_runs_beside_the_policy_update(tmp_path, monkeypatch):
    """No timing: round k's judge only returns once round k's policy update has begun, which the serial
    order could never satisfy (it would time out)."""
    started = threading.Event()
    judge_selected, update_policy = OnlineLoop.judge_selected, OnlineLoop.update_policy

    def judge_after_policy(self, rollouts, chosen):
        assert started.wait(timeout=120), "the policy update never started while the judge was busy"
        started.clear()
        return judge_selected(self, rollouts, chosen)

    def policy(self, samples, index):
        started.set()
        return update_policy(self, samples, index)
    monkeypatch.setattr(OnlineLoop, "judge_selected", judge_after_policy)
    monkeypatch.setattr(OnlineLoop, "update_policy", policy)
    done, _ = run_loop(tmp_path / "run", "overlap", rounds=2)
    assert [d.index for d in done] == [1, 2]


@pytest.mark.parametrize("prm_update,world,expected", [
    ("pre_update_rewards", "1", "overlap"), ("none", "1", "overlap"),
    ("post_update_rewards", "1", "serial"), ("pre_update_rewards", "2", "serial")])
def test_overlap_only_where_valid(tmp_path, monkeypatch, prm_update, world, expected):
    """One rule (rl.config.overlap_blockers): auto resolves by it, an explicit overlap it blocks fails at
    validation naming the blocking key, serial is always serial."""
    monkeypatch.setenv("WORLD_SIZE", world)
    mode = "none" if prm_update == "none" else "uncertain"   # a frozen PRM pays no judge
    assert effective_schedule(tiny_config(tmp_path, prm_update=prm_update, mode=mode, schedule="auto")) == expected
    assert effective_schedule(tiny_config(tmp_path, prm_update=prm_update, mode=mode, schedule="serial")) == "serial"
    if expected == "overlap":
        assert effective_schedule(tiny_config(tmp_path, prm_update=prm_update, mode=mode, schedule="overlap")) == "overlap"
    else:
        blocker = "prm_update=post_update_rewards" if prm_update == "post_update_rewards" else f"WORLD_SIZE={world}"
        with pytest.raises(ConfigError, match=f"schedule=overlap .*{blocker}.*set schedule=serial"):
            tiny_config(tmp_path, prm_update=prm_update, mode=mode, schedule="overlap")


def test_a_zero3_prm_runs_serially(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    cfg = tiny_config(tmp_path, prm_update="pre_update_rewards", schedule="auto")
    cfg.trainer.deepspeed, cfg.prm.zero_stage = True, 3   # gathers/frees weights per forward: one thread
    assert effective_schedule(cfg) == "serial"
    cfg.schedule = "overlap"   # changed after validation: the same rule refuses it where it is applied
    with pytest.raises(ConfigError, match="prm.zero_stage=3"):
        effective_schedule(cfg)
    cfg.prm.zero_stage = 2
    assert effective_schedule(cfg) == "overlap"
