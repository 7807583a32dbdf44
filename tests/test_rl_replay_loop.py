"""The online loop with the PRM replay (prm.replay): every paid label is trained on, held-out PRM quality
is logged each round, and a resumed run matches an uninterrupted one exactly (replay state included)."""
from prm.config import ReplayConfig
from rl.online import run
from tests.test_rl_loop import assert_same, ledger_rows, tiny_config


def replay_config(out_dir, rounds=3):
    return tiny_config(out_dir, rounds=rounds, mode="all",
                       replay=ReplayConfig(enabled=True, steps=2, batch_size=4, new_fraction=0.5, heldout_size=6))


def test_replay_run_logs_heldout_quality_and_resumes_exactly(tmp_path):
    full = run(replay_config(tmp_path / "a"))
    assert [m["prm/replay_size"] for m in full] == [12, 24, 36]  # judge-all: 3 prompts x 4 samples a round
    assert all(m["prm/trained"] == 8 for m in full) and "prm/heldout_auroc_within" in full[-1]
    assert (tmp_path / "a" / "heldout.jsonl").read_text().count("\n") == 6
    run(replay_config(tmp_path / "b"), stop_after=1)
    resumed = run(replay_config(tmp_path / "b"))
    for a, b in zip(full, resumed):
        assert_same(a, b)
    assert ledger_rows(tmp_path / "a") == ledger_rows(tmp_path / "b")
