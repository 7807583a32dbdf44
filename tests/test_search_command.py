"""`python -m rl.search` end to end on tiny-random-llama (HF backend, fresh tiny PRM), plus the report."""
from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from core.config import ConfigError, validate
from rl.search import MethodConfig, SearchConfig, bon_sizes, search


def _compose(tmp_path, *overrides):
    with initialize_config_module("configs", version_base=None):
        raw = compose("search", overrides=[
            "policy.model=tiny-random-llama", "rollout.backend=hf", "policy.dtype=fp32", "rollout.max_new_tokens=12",
            "rollout.step_max_new_tokens=6", "prm.backbone=tiny-random-llama", "prm.dtype=fp32", "prm.num_heads=4",
            "task.limit=2", "ns=[4]", "seeds=[0]", "method.beam.max_iterations=2",
            "method.dvts.max_iterations=2", "method.beam.beam_width=2", "method.dvts.beam_width=2",
            f"trainer.out_dir={tmp_path}", *overrides])
    return OmegaConf.to_container(raw, resolve=True)


def _cfg(tmp_path, *overrides):
    return validate(_compose(tmp_path, *overrides), SearchConfig)


def test_bon_sizes_are_powers_of_two_then_n():
    assert bon_sizes(16) == [1, 2, 4, 8, 16]
    assert bon_sizes(6) == [1, 2, 4, 6]
    assert bon_sizes(1) == [1]


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ConfigError):
        _cfg(tmp_path, "+policy.temprature=1.0")
    with pytest.raises(ConfigCompositionException):
        _compose(tmp_path, "policy.temprature=1.0")
    with pytest.raises(ValueError, match="aggregate"):
        search(_cfg(tmp_path, "scorer.aggregate=mean"))
    cfg = _cfg(tmp_path)
    cfg.method["mcts"] = MethodConfig()
    with pytest.raises(KeyError, match="mcts"):
        search(cfg)


def test_search_end_to_end_tiny_model(tmp_path, capsys):
    search(_cfg(tmp_path))
    err = capsys.readouterr().err   # a progress bar per run, ticking per generation round
    assert "seed 0 beam n=4" in err and "seed 0 dvts n=4" in err and "round" in err
    names = sorted(p.name for p in (tmp_path / "records").iterdir())
    assert names == ["beam-n4-beta0-seed0.jsonl", "beam-n4-beta1-seed0.jsonl", "best_of_n-n4-seed0.jsonl",
                     "dvts-n4-beta0-seed0.jsonl", "dvts-n4-beta1-seed0.jsonl", "greedy-n1-seed0.jsonl"]
    bon = [json.loads(line) for line in (tmp_path / "records" / "best_of_n-n4-seed0.jsonl").open()]
    assert len(bon) == 2 and all(len(r["solutions"]) == 4 for r in bon)
    for rec in bon:   # n' results are read off the first n' samples of one set
        tokens = [s["tokens"] for s in rec["solutions"]]
        for r in rec["results"]:
            assert r["cost"]["generated_tokens"] == sum(tokens[: r["n"]])
        assert {r["n"] for r in rec["results"]} == {1, 2, 4}
        assert {r["label"] for r in rec["results"]} >= {"best_of_n/weighted", "best_of_n/weighted (mean-1std)",
                                                        "best_of_n/majority"}
        assert all(len(s["mean"]) == len(s["std"]) for s in rec["solutions"])
    dv = [json.loads(line) for line in (tmp_path / "records" / "dvts-n4-beta0-seed0.jsonl").open()]
    assert all(len(r["solutions"]) == 4 and r["cost"]["prm_passes"] > 0 for r in dv)  # n/M subtrees x M candidates
    summary = (tmp_path / "summary.md").read_text()
    assert "| greedy | 1 |" in summary and "beam/weighted (mean-1std)" in summary
    assert (tmp_path / "search.png").stat().st_size > 0


def test_rollout_policy_reads_step_ends_eos_and_length_caps():
    from types import SimpleNamespace as C

    from rl.config import RolloutConfig
    from rl.search import RolloutPolicy

    class Backend:
        def generate(self, prompts, n, max_new_tokens, temperature, top_p, stop):
            assert stop == (["\n\n"] if max_new_tokens == 6 else None)
            return [[C(text="1 + 2 = 3\n\n", token_ids=[1] * 5, finish_reason="stop", forward_tokens=11),
                     C(text="The answer is 3.", token_ids=[1] * 4, finish_reason="stop", forward_tokens=12),
                     C(text="a very long st", token_ids=[1] * 6, finish_reason="length", forward_tokens=13)]]

    policy = RolloutPolicy(Backend(), RolloutConfig(step_max_new_tokens=6, max_new_tokens=12))
    step, eos, capped = policy(["p"], 3, one_step=True)[0]
    assert (step.text, step.step_end, step.n_tokens) == ("1 + 2 = 3", True, 5)
    assert not eos.step_end                       # EOS: the solution is over
    assert capped.step_end and capped.text == "a very long st"   # length cap: a long step, go on
    assert [c.forward_tokens for c in (step, eos, capped)] == [11, 12, 13]   # the backend's count, passed on
    assert not any(c.step_end for c in policy(["p"], 3, one_step=False)[0])


def test_saved_prm_is_placed_on_prm_device(tmp_path, monkeypatch):
    """prm.path loads the saved model, but placement comes from this run's prm.device (a PRM trained on
    a GPU box evaluated on a CPU one, or the reverse); the saved device must not win."""
    import rl.search as search_mod
    from prm.model import EnsemblePRM

    seen = {}

    def fake_load(path, heads_only=False, device="cpu", **overrides):
        seen.update(path=path, device=device)
        return "loaded"

    monkeypatch.setattr(EnsemblePRM, "load", staticmethod(fake_load))
    cfg = _cfg(tmp_path, f"prm.path={tmp_path}/prm", "prm.device=cpu")
    assert search_mod.load_prm(cfg.prm) == "loaded" and seen == {"path": f"{tmp_path}/prm", "device": "cpu"}
    cfg.prm.device = "cuda:3"     # set after validation: only the hand-over is under test here
    search_mod.load_prm(cfg.prm)
    assert seen["device"] == "cuda:3"


def test_killed_run_resumes_to_the_uninterrupted_records(tmp_path):
    """Complete records written under the same settings are kept; a missing or half-written one is
    recomputed and equals the uninterrupted run's (HF backend: every run seeded on its own); another
    setting recomputes."""
    import os

    full, cut = tmp_path / "full", tmp_path / "cut"
    search(_cfg(full, "scorer.betas=[0.0]"))
    search(_cfg(cut, "scorer.betas=[0.0]"))
    records = sorted(p.name for p in (full / "records").iterdir())
    assert records == ["beam-n4-beta0-seed0.jsonl", "best_of_n-n4-seed0.jsonl", "dvts-n4-beta0-seed0.jsonl",
                       "greedy-n1-seed0.jsonl"]
    (cut / "records" / "beam-n4-beta0-seed0.jsonl").unlink()                      # killed before beam ended
    half = cut / "records" / "best_of_n-n4-seed0.jsonl"
    half.write_text(half.read_text().splitlines()[0] + "\n")                       # a torn file: 1 of 2 problems
    kept = cut / "records" / "greedy-n1-seed0.jsonl"
    os.utime(kept, (1, 1))
    search(_cfg(cut, "scorer.betas=[0.0]"))
    assert kept.stat().st_mtime == 1                                               # not recomputed

    def content(d, name):   # wall-clock seconds differ between runs; everything else must not
        return [{k: v for k, v in json.loads(line).items() if k != "batch_seconds"}
                for line in (d / "records" / name).open()]

    for name in records:
        assert content(cut, name) == content(full, name), name
    search(_cfg(cut, "scorer.betas=[0.0]", "rollout.max_new_tokens=10"))
    assert kept.stat().st_mtime != 1                                               # new settings: recomputed


def test_step_wise_search_with_prefix_cache_equals_full_passes(tmp_path, monkeypatch):
    """Beam/DVTS score through prm.prefix_cache (reusing the parents' keys/values) unless
    scorer.prefix_cache_gb=0; both give the same searches and scores, the cache for fewer PRM positions."""
    from prm import prefix_cache

    made = []
    real = prefix_cache.PrefixCachedScorer

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(prefix_cache, "PrefixCachedScorer", spy)
    cached, full = tmp_path / "cached", tmp_path / "full"
    overrides = ["method=[beam,dvts]", "scorer.betas=[0.0]", "method.beam.max_iterations=3",
                 "method.dvts.max_iterations=3", "rollout.max_new_tokens=18"]
    search(_cfg(cached, *overrides))
    assert len(made) == 2 and sum(s.tokens_reused for s in made) > 0      # one per run, and it reused
    search(_cfg(full, *overrides, "scorer.prefix_cache_gb=0"))
    assert len(made) == 2                                                   # off: full passes only
    def but_scorer_positions(cost):
        return {k: v for k, v in cost.items() if k != "scorer_forward_tokens"}

    for name in ("beam-n4-beta0-seed0.jsonl", "dvts-n4-beta0-seed0.jsonl"):
        a = [json.loads(line) for line in (cached / "records" / name).open()]
        b = [json.loads(line) for line in (full / "records" / name).open()]
        for ra, rb in zip(a, b, strict=True):
            assert [s["text"] for s in ra["solutions"]] == [s["text"] for s in rb["solutions"]]
            assert but_scorer_positions(ra["cost"]) == but_scorer_positions(rb["cost"])
            assert ra["results"] == [{**r, "cost": ra["cost"]} for r in rb["results"]]   # the same choices
            assert 0 < ra["cost"]["scorer_forward_tokens"] < rb["cost"]["scorer_forward_tokens"]
            for sa, sb in zip(ra["solutions"], rb["solutions"]):
                assert sa["mean"] == pytest.approx(sb["mean"], abs=1e-5)
