"""Numeric settings out of range (and benchmark subsets that do not exist) fail while the config is validated,
naming the key, before any model, engine or judge is built (rollout.n=0 would otherwise divide by zero after the
policy has loaded)."""
import pytest

import judges.eval
import prm.eval
import prm.train
import rl.online
import rl.search
from core.config import ConfigError, check_ranges
from tests.test_configs import _compose, _no_model_may_load

MAINS = {"online": rl.online.main, "search": rl.search.main, "prm_train": prm.train.main,
         "prm_eval": prm.eval.main, "judge_eval": judges.eval.main}

BAD = [  # (config, overrides, the key the message must name)
    ("online", ["rollout.n=0"], "rollout.n"),
    ("online", ["rollout.temperature=-0.5"], "rollout.temperature"),
    ("online", ["rollout.top_p=0"], "rollout.top_p"),
    ("online", ["rollout.top_p=1.5"], "rollout.top_p"),
    ("online", ["rollout.max_new_tokens=0"], "rollout.max_new_tokens"),
    ("online", ["rollout.batch_size=0"], "rollout.batch_size"),
    ("online", ["task.prompts_per_round=0"], "task.prompts_per_round"),
    ("online", ["task=chain", "task.min_ops=6", "task.max_ops=4"], "task.min_ops"),
    ("online", ["algo.mini_batch_size=0"], "algo.mini_batch_size"),
    ("online", ["algo.micro_batch_size=0"], "algo.micro_batch_size"),
    ("online", ["algo.ppo_epochs=0"], "algo.ppo_epochs"),
    ("online", ["algo.clip_eps=0"], "algo.clip_eps"),
    ("online", ["algo.kl_coef=-0.1"], "algo.kl_coef"),
    ("online", ["algo.process_weight=-1"], "algo.process_weight"),
    ("online", ["policy.lr=0"], "policy.lr"),
    ("online", ["policy.zero_stage=4"], "policy.zero_stage"),
    ("online", ["prm.lr=-1e-5"], "prm.lr"),
    ("online", ["prm.head_lr=0"], "prm.head_lr"),
    ("online", ["prm.num_heads=0"], "prm.num_heads"),
    ("online", ["prm.delta_pred=1.5"], "prm.delta_pred"),
    ("online", ["prm.delta_std=-0.1"], "prm.delta_std"),
    ("online", ["prm.threshold=2"], "prm.threshold"),
    ("online", ["prm.batch_size=0"], "prm.batch_size"),
    ("online", ["replay.new_fraction=1.5"], "replay.new_fraction"),
    ("online", ["replay.batch_size=0"], "replay.batch_size"),
    ("online", ["policy_eval.n=0"], "policy_eval.n"),
    ("online", ["rounds=0"], "rounds"),
    ("online", ["keep_checkpoints=0"], "keep_checkpoints"),
    ("online", ["trainer.save_every=-1"], "trainer.save_every"),
    ("online", ["judge.max_labels=-1"], "judge.max_labels"),
    ("search", ["ns=[0,2]"], "ns"),
    ("search", ["method.beam.beam_width=0"], "method.beam.beam_width"),
    ("search", ["method.dvts.max_iterations=0"], "method.dvts.max_iterations"),
    ("search", ["scorer.prefix_cache_gb=-1"], "scorer.prefix_cache_gb"),
    ("search", ["task.limit=0"], "task.limit"),
    ("search", ["task.offset=-1"], "task.offset"),
    ("search", ["rollout.n=0"], "rollout.n"),
    ("search", ["job=pool", "pool.n=0"], "pool.n"),
    ("prm_train", ["select.budget=-0.5"], "select.budget"),
    ("prm_train", ["epochs=0"], "epochs"),
    ("prm_train", ["pool.limit=0"], "pool.limit"),
    ("prm_train", ["prm.pos_weight=0"], "prm.pos_weight"),
    ("prm_train", ["prm.zero_stage=5"], "prm.zero_stage"),
    ("prm_train", ["eval.threshold=1.5"], "eval.threshold"),
    ("prm_train", ["eval.limit=0"], "eval.limit"),
    ("prm_train", ["stop_after_batches=0"], "stop_after_batches"),
    ("prm_train", ["trainer.save_every=-1"], "trainer.save_every"),
    ("prm_eval", ["eval.batch_size=0"], "eval.batch_size"),
    ("prm_eval", ["eval.prmbench_limit=0"], "eval.prmbench_limit"),
    ("prm_eval", ["prm.batch_size=0"], "prm.batch_size"),
    ("prm_eval", ["eval.subsets=[gsm8k,gsm9k]"], "eval.subsets"),
    ("prm_train", ["eval.tune_on=gsm9k"], "eval.tune_on"),
    ("judge_eval", ["eval.subsets=[gsm9k]"], "eval.subsets"),
    ("judge_eval", ["eval.limit=0"], "eval.limit"),
    ("judge_eval", ["judge.max_labels=-1"], "judge.max_labels"),
]


@pytest.mark.parametrize("name,overrides,key", BAD, ids=[f"{n} {' '.join(o)}" for n, o, _ in BAD])
def test_an_out_of_range_value_fails_at_validation_naming_its_key(monkeypatch, tmp_path, name, overrides, key):
    _no_model_may_load(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        MAINS[name](_compose(name, [*overrides, f"trainer.out_dir={out}"]))   # hydra.main runs a passed config
    assert f"{key} must be" in str(err.value) or f"{key}=" in str(err.value), str(err.value)
    assert not out.exists()   # nothing was written: the run never started


def test_every_key_outside_its_range_is_named_at_once():
    class Node:
        n, top_p, limit = 0, 1.5, None   # None: an unset optional passes
    with pytest.raises(ConfigError) as err:
        check_ranges(Node(), "rollout.", n=">= 1", top_p="in (0, 1]", limit=">= 1")
    assert str(err.value) == "rollout.n must be >= 1, got 0; rollout.top_p must be in (0, 1], got 1.5"
