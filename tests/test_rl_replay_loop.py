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


def test_logprob_step_features_online_resume_exactly(tmp_path):
    """prm.step_features=hidden_logprob through the whole round (cached features, replay, held-out quality):
    the heads read H + 2 features and a killed run resumes to the same metrics."""
    from dataclasses import replace

    def cfg(out):
        c = replay_config(out, rounds=2)
        return replace(c, prm=replace(c.prm, step_features="hidden_logprob"))
    full = run(cfg(tmp_path / "a"))
    assert len(full) == 2 and full[-1]["prm/trained"] == 8 and "prm/heldout_auroc" in full[-1]
    run(cfg(tmp_path / "b"), stop_after=1)
    for a, b in zip(full, run(cfg(tmp_path / "b"))):
        assert_same(a, b)


def test_heldout_set_is_judged_inside_the_run_budget_and_count(tmp_path):
    """The held-out set goes through the run's ledger: judge.max_labels covers it, round 1's judge/calls
    counts it, and the replay never trains on it."""
    cfg = tiny_config(tmp_path / "a", rounds=1, mode="all", judge={"name": "rule", "max_labels": 8},
                      replay=ReplayConfig(enabled=True, steps=2, batch_size=4, new_fraction=0.5, heldout_size=6))
    [m] = run(cfg)
    assert ledger_rows(tmp_path / "a") == 8 and not (tmp_path / "a" / "heldout.sqlite").exists()
    assert m["judge/calls"] == 8 and m["judge/heldout_calls"] == 6
    assert m["judge/refused_budget"] == 12 - 2 and m["judge/labels"] == 2
    assert m["prm/replay_size"] == 2  # the round's two labels, not the held-out six
    assert {"judge/invalid", "judge/failed", "judge/ledger_hits"} <= set(m)
def test_the_same_seed_gives_the_same_run_at_1_and_4_judge_requests_in_flight(tmp_path):
    """Replies land in another order with 4 requests in flight (the ledger commits them as they land);
    the replay reads labels by content, not commit order, so every metric matches the serial run."""
    import zlib
    from dataclasses import replace

    from tests.fake_openai_server import FakeOpenAIServer, Reply

    def verdict(request):
        crc = zlib.crc32(request.prompt.encode())
        return Reply(content="\\boxed{0}" if crc % 2 else "\\boxed{-1}", delay_s=0.05 * (crc % 5))

    runs = {}
    with FakeOpenAIServer(verdict) as server:
        for concurrency in (1, 4):
            cfg = replay_config(tmp_path / f"c{concurrency}", rounds=2)
            judge = {"name": "llm", "base_url": server.base_url, "model": "critic", "max_concurrency": concurrency,
                     "max_retries": 0}
            runs[concurrency] = run(replace(cfg, judge=judge))
    assert len(runs[1]) == len(runs[4]) == 2
    for a, b in zip(runs[1], runs[4]):
        assert_same(a, b)
