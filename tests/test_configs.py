"""Every shipped config composes from the installed `configs` package and fits its schema;
unknown or ill-typed keys fail at start-up with the key named."""
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from judges.config import JudgeConfig, validate_judge_config
from prm.config import ConfigError, PRMEvalConfig, PRMTrainConfig, validate
from rl.config import OnlineConfig
from rl.search import SearchConfig

TOP_LEVEL = {"online": OnlineConfig, "online_gsm8k": OnlineConfig, "prm_train": PRMTrainConfig,
             "prm_eval": PRMEvalConfig, "search": SearchConfig}


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


@pytest.mark.parametrize("group,options", [("algo", ["grpo", "rloo", "reinforce_pp"]), ("rollout", ["hf", "vllm"]),
                                           ("policy", ["smollm2_lora", "smollm2_full", "tiny"]),
                                           ("data", ["arithmetic", "gsm8k", "math500"]),
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


README_OVERRIDES = [
    ("online", ["select.mode=all"]), ("online", ["select.mode=random"]), ("online", ["prm_update=none"]),
    ("online", ["schedule=serial"]), ("prm_train", ["prm=smollm2_full", "prm.batch_layout=packed"]),
    ("online", ["algo.reward=outcome", "select.mode=none", "prm_update=none"]),
    ("online", ["algo=rloo", "rollout=vllm", "policy=smollm2_lora"]),
    ("prm_train", ["mode=random", "budget=0.3"]),
    ("prm_train", ["prm=smollm2_lora", "judge=rule", "data=jsonl", "data.path=my_pool.jsonl"]),
    ("prm_train", ["mode=filter", "prm.path=outputs/prm_train/prm"]), ("prm_train", ["trainer=zero2"]),
    ("prm_eval", ["prm.path=outputs/prm_train/prm", "eval.tune_on=gsm8k", "eval.prmbench=true"]),
    ("search", ["method=[greedy,best_of_n,beam,dvts]", "prm.path=outputs/prm_train/prm", "dataset.name=gsm8k",
                "dataset.limit=20"]),
]


@pytest.mark.parametrize("name,overrides", README_OVERRIDES)
def test_readme_commands_compose(name, overrides):
    """The command lines shown in README.md stay valid."""
    cfg = _compose(name, overrides)
    validate(OmegaConf.to_container(cfg, resolve=True), TOP_LEVEL[name])


def test_readme_gpu_search_command_composes_and_fails_clearly_without_cuda():
    cfg = _compose("search", ["policy.backend=hf", "policy.device=cuda", "prm.device=cuda", "prm.path=..."])
    container = OmegaConf.to_container(cfg, resolve=True)
    if torch.cuda.is_available():
        assert validate(container, TOP_LEVEL["search"]).prm.device == "cuda"
    else:
        with pytest.raises(ConfigError, match="cuda"):
            validate(container, TOP_LEVEL["search"])


def test_readme_judge_eval_command_composes():
    cfg = _compose("judge_eval", ["judge=llm", "judge.base_url=http://127.0.0.1:9/v1", "judge.model=m"])
    assert validate_judge_config(cfg.judge).base_url == "http://127.0.0.1:9/v1"
