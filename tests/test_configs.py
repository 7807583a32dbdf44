"""Every shipped config composes from the installed `configs` package and fits its schema;
unknown or ill-typed keys fail at start-up with the key named."""
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import core.models
import rl.online
from judges.config import JudgeConfig, JudgeEvalConfig, LLMJudgeConfig
from judges.registry import validate_judge_config
from core.config import ConfigError, validate
from prm.config import PRMEvalConfig, PRMTrainConfig
from rl.config import OnlineConfig
from rl.search import SearchConfig

TOP_LEVEL = {"online": OnlineConfig, "online_gsm8k": OnlineConfig, "prm_train": PRMTrainConfig,
             "prm_eval": PRMEvalConfig, "search": SearchConfig, "judge_eval": JudgeEvalConfig}


def _compose(name: str, overrides=()):
    with initialize_config_module(config_module="configs", version_base=None):
        return compose(config_name=name, overrides=list(overrides))


@pytest.mark.parametrize("name", sorted(TOP_LEVEL))
def test_top_level_configs_compose_and_validate(name):
    cfg = validate(OmegaConf.to_container(_compose(name), resolve=True), TOP_LEVEL[name])
    assert isinstance(cfg, TOP_LEVEL[name])


def test_judge_eval_config_and_every_judge():
    for judge in ("rule", "llm", "oracle"):
        cfg = _compose("judge_eval", [f"judge={judge}"])
        assert isinstance(validate_judge_config(cfg.judge), JudgeConfig)
    assert isinstance(validate_judge_config({"name": "llm"}), LLMJudgeConfig)
    with pytest.raises(ValueError, match="base_url"):   # a key of another kind
        validate_judge_config({"name": "rule", "base_url": "http://x"})


@pytest.mark.parametrize("group,options", [("algo.advantage", ["grpo", "rloo", "reinforce_pp"]),
                                           ("rollout", ["hf", "vllm"]),
                                           ("policy", ["smollm2_lora", "smollm2_full", "tiny"]),
                                           ("task", ["arithmetic", "gsm8k", "math500", "chain_sparse", "chain_lucky",
                                                     "chain_context"]),
                                           ("algo.process_credit", ["sum", "min", "first_error"]),
                                           ("algo.process_source", ["prm", "implicit"]),
                                           ("prm", ["smollm2_frozen", "smollm2_lora", "smollm2_full", "tiny"])])
def test_online_group_options(group, options):
    for option in options:
        cfg = _compose("online", [f"{group}={option}"])
        validate(OmegaConf.to_container(cfg, resolve=True), OnlineConfig)


def test_unknown_key_fails_with_its_name():
    raw = OmegaConf.to_container(_compose("prm_train"), resolve=True)
    raw["prm"]["num_haeds"] = 4
    with pytest.raises(ConfigError, match="num_haeds"):
        validate(raw, PRMTrainConfig)


def test_ill_typed_value_fails_with_its_name():
    raw = OmegaConf.to_container(_compose("online"), resolve=True)
    raw["prm"]["num_heads"] = "many"
    with pytest.raises(ConfigError, match="num_heads"):
        validate(raw, OnlineConfig)


def _no_model_may_load(monkeypatch):
    """Every way a command builds a model or engine raises: a config error must come first."""
    import prm.model
    import rl.policy
    import rl.search

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was rejected")
    for module in (core.models, prm.model, rl.policy):
        monkeypatch.setattr(module, "load_model", forbidden)
    monkeypatch.setattr(rl.online, "build", forbidden)
    monkeypatch.setattr(rl.search, "make_backend", forbidden)


@pytest.mark.parametrize("overrides,keys", [
    (["select.mode=all", "prm_update=none", "algo.reward=outcome"], ["select.mode=all", "prm_update=none"]),
    (["select.mode=none"], ["prm_update=pre_update_rewards", "select.mode=none"]),
    (["judge=llm", "judge.max_concurrency=0"], ["judge.max_concurrency"]),
    (["select.budget_per_round=0"], ["select.budget_per_round"]),
    (["algo.reward=outcome", "algo.process_warmup_rounds=3"], ["algo.process_warmup_rounds", "algo.reward"]),
    (["algo.process_source=judge"], ["algo.process_source=judge", "select.mode=all", "schedule=serial"]),
    (["algo.process_source=judge", "select.mode=all", "schedule=overlap"],
     ["schedule=overlap", "algo.process_source=judge", "schedule=serial"]),
    (["prm_update=post_update_rewards", "schedule=overlap"],
     ["schedule=overlap", "prm_update=post_update_rewards", "schedule=serial"]),
    (["algo.advantage=grpoo"], ["algo.advantage='grpoo'", "register_estimator"]),
    (["algo.process_scale=0.5", "algo.reward=process"], ["algo.process_scale", "algo.reward=both"]),
    (["algo.process_scale=0.5", "algo.process_weight=0.25"], ["algo.process_scale", "algo.process_weight=1.0"]),
    (["algo.min_temperature=-1"], ["algo.min_temperature"]),
    (["algo.process_source=implicit", "algo.process_credit=first_error"], ["algo.process_credit=first_error",
                                                                            "process_source=implicit"]),
    (["algo.process_source=orm"], ["algo.process_source=orm", "replay.enabled=false"]),
])
def test_online_contradiction_fails_before_any_model_loads(monkeypatch, overrides, keys):
    _no_model_may_load(monkeypatch)
    with pytest.raises(ConfigError) as err:
        rl.online.main(_compose("online", overrides))   # hydra.main runs a passed config directly
    assert all(key in str(err.value) for key in keys), str(err.value)


def test_replay_under_several_ranks_fails_before_any_model_loads(monkeypatch):
    """The default replays every paid label in one process; under torchrun (WORLD_SIZE > 1) it says so at once."""
    _no_model_may_load(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="replay.enabled=false"):
        rl.online.main(_compose("online", []))
    validate(OmegaConf.to_container(_compose("online", ["replay.enabled=false"]), resolve=True), OnlineConfig)
    validate(OmegaConf.to_container(_compose("online_gsm8k", []), resolve=True), OnlineConfig)


@pytest.mark.parametrize("name,overrides,message", [
    ("prm_train", ["+mode=active"], "Key 'mode' not in"), ("prm_train", ["+budget=0.3"], "Key 'budget' not in"),
    ("prm_train", ["select.mode=none"], "select.mode=none"),
    ("prm_train", ["judge=rule", "+judge.base_url=x"], "base_url"),
    ("prm_eval", ["judge=llm", "judge.max_concurrency=0"], "judge.max_concurrency"),
])
def test_prm_commands_reject_bad_configs_before_any_model_loads(monkeypatch, name, overrides, message):
    import prm.eval
    import prm.train

    _no_model_may_load(monkeypatch)
    main = {"prm_train": prm.train.main, "prm_eval": prm.eval.main}[name]
    with pytest.raises(ConfigError, match=re.escape(message)):
        main(_compose(name, overrides))


def test_old_values_fail_at_composition_naming_the_key_and_the_new_values():
    with pytest.raises(Exception) as err:
        _compose("online", ["prm_update=before"])
    message = f"{err.value} {err.value.__cause__}"
    assert "prm_update" in message and "pre_update_rewards" in message and "post_update_rewards" in message
    with pytest.raises(Exception, match="algo/rloo"):
        _compose("online", ["algo=rloo"])
    with pytest.raises(ConfigError, match="Key 'mode' not in 'PRMTrainConfig'"):   # no tombstone: struct mode
        validate({"mode": "active"}, PRMTrainConfig)


def test_schema_only_keys_need_no_plus():
    """Every command's defaults list starts with its schema: a key only the schema has is overridable."""
    assert _compose("online", ["prm.path=x"]).prm.path == "x"
    assert _compose("search", ["prm.path=x"]).prm.path == "x"
    assert _compose("prm_eval", ["prm.lora_r=3"]).prm.lora_r == 3
    assert _compose("prm_train", ["prm.lora_r=3"]).prm.lora_r == 3
    assert _compose("judge_eval", ["eval.limit=3"]).eval.limit == 3
    assert _compose("prm_eval", ["+judge.name=rule"]).judge.name == "rule"   # the older documented form


ONE_SPELLING = {"online": ["trainer.out_dir=o", "trainer.resume=never", "trainer.seed=3"],
                "prm_train": ["trainer.out_dir=o", "trainer.resume=never", "trainer.seed=3"],
                "search": ["trainer.out_dir=o", "trainer.resume=never"],
                "prm_eval": ["trainer.out_dir=o"], "judge_eval": ["trainer.out_dir=o", "trainer.seed=3"]}


@pytest.mark.parametrize("name", sorted(ONE_SPELLING))
def test_every_command_takes_trainer_out_dir_and_resume(name):
    """The five commands spell the output dir (and resume, seed where they have them) as trainer.*."""
    cfg = validate(OmegaConf.to_container(_compose(name, ONE_SPELLING[name]), resolve=True), TOP_LEVEL[name])
    assert cfg.trainer.out_dir == "o"
    for override in ONE_SPELLING[name][1:]:
        key, value = override.removeprefix("trainer.").split("=")
        assert str(getattr(cfg.trainer, key)) == value
    raw = OmegaConf.to_container(OmegaConf.load(Path(rl.online.__file__).parent.parent / "configs" / f"{name}.yaml"))
    hydra_dir = raw["hydra"]["run"]["dir"]
    assert hydra_dir.startswith("${trainer.out_dir}/hydra")


def test_search_resume_takes_auto_or_never():
    with pytest.raises(ConfigError, match="trainer.resume must be auto or never"):
        validate(OmegaConf.to_container(_compose("search", ["trainer.resume=false"]), resolve=True), SearchConfig)
