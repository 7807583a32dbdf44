"""The keys every command spells the same way: the data root (top-level `data_root`) and the judge ledger
(`judge.ledger_path`, default `<trainer.out_dir>/ledger.sqlite`), one device and one ZeRO stage key per model, `eval.*` for the step
scorer's benchmark and `policy_eval.*` for the policy's pass rate, the `prm` group. Each reaches the code that reads it."""
import json
import random

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from judges.config import JudgeEvalConfig
from core.config import ConfigError, validate
from prm.config import PRMEvalConfig, PRMTrainConfig
from rl.config import OnlineConfig
from rl.search import SearchConfig

SCHEMAS = {"online": OnlineConfig, "search": SearchConfig, "prm_train": PRMTrainConfig,
           "prm_eval": PRMEvalConfig, "judge_eval": JudgeEvalConfig}
GSM8K = [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(3)]


def _validated(name, overrides):
    with initialize_config_module(config_module="configs", version_base=None):
        cfg = compose(config_name=name, overrides=list(overrides))
    return validate(OmegaConf.to_container(cfg, resolve=True), SCHEMAS[name])


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_command_takes_the_top_level_data_root(name):
    assert _validated(name, ["data_root=/d"]).data_root == "/d"


@pytest.mark.parametrize("name,judge", [("online", []), ("prm_train", []), ("judge_eval", []),
                                        ("prm_eval", ["judge=rule"])])
def test_every_labelling_command_takes_judge_ledger_path(name, judge):
    assert _validated(name, [*judge, "judge.ledger_path=/l.sqlite"]).judge.ledger_path == "/l.sqlite"


def test_rl_online_default_ledger_is_ledger_sqlite_as_in_every_command(tmp_path):
    from rl.online import ledger_path

    cfg = _validated("online", [f"trainer.out_dir={tmp_path}"])
    assert ledger_path(cfg) == str(tmp_path / "ledger.sqlite")


@pytest.mark.parametrize("name", ["online", "search"])
def test_the_policy_and_the_prm_each_have_one_device_key(name):
    cfg = _validated(name, ["policy.device=cpu", "prm.device=cpu"])
    assert (cfg.policy.device, cfg.prm.device) == ("cpu", "cpu")
    assert not hasattr(cfg.rollout, "device")


@pytest.mark.parametrize("name", ["online", "prm_train"])
def test_each_model_has_its_own_zero_stage(name):
    cfg = _validated(name, ["prm.zero_stage=2"] + (["policy.zero_stage=3"] if name == "online" else []))
    assert cfg.prm.zero_stage == 2 and not hasattr(cfg.trainer, "zero_stage")
    if name == "online":
        assert cfg.policy.zero_stage == 3


@pytest.mark.parametrize("name", ["search", "online", "prm_train", "prm_eval"])
def test_every_command_with_a_prm_composes_the_prm_group(name):
    assert _validated(name, ["prm=tiny"]).prm.backbone == "tiny-random-llama"


@pytest.mark.parametrize("name", ["judge_eval", "prm_eval", "prm_train"])
def test_benchmark_items_are_eval_subsets_and_eval_limit_in_every_command(name):
    cfg = _validated(name, ["eval.subsets=[math]", "eval.limit=7"])
    assert (cfg.eval.subsets, cfg.eval.limit) == (["math"], 7)
    assert _validated(name, ["eval.subsets=[all]"]).eval.subsets == ["gsm8k", "math", "olympiadbench", "omnimath"]


def test_policy_eval_is_the_policys_pass_rate_apart_from_eval():
    cfg = _validated("online", ["policy_eval.every=3"])
    assert cfg.policy_eval.every == 3 and not hasattr(cfg, "eval")


def test_prm_train_reads_its_pool_by_pool_name_and_subset(tmp_path):
    from prm.train import load_training_pool

    pb = [{"id": f"m-{i}", "generator": "x", "problem": f"m{i}", "steps": ["a"], "label": -1} for i in range(2)]
    (tmp_path / "processbench").mkdir()
    (tmp_path / "processbench" / "math.json").write_text(json.dumps(pb))

    class FakePRM:
        def encode(self, question, steps):
            return [0], None
    cfg = _validated("prm_train", ["pool=processbench", "pool.subset=math", f"data_root={tmp_path}"])
    assert cfg.pool.name == "processbench" and not hasattr(cfg.pool, "kind")
    assert sorted(t.question for t in load_training_pool(cfg, FakePRM())) == ["m0", "m1"]


def test_judges_eval_rejects_the_old_ledger_key_itself(tmp_path):
    """The command validates its own config (not only the tests): `+ledger=` fails before any judge runs."""
    from judges.eval import run

    with initialize_config_module(config_module="configs", version_base=None):
        cfg = compose("judge_eval", overrides=[f"+ledger={tmp_path}/l.sqlite", f"trainer.out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="Key 'ledger' not in 'JudgeEvalConfig'"):
        run(cfg)
    assert not (tmp_path / "l.sqlite").exists()


class Stop(Exception):
    pass


def _gsm8k_root(tmp_path):
    (tmp_path / "gsm8k").mkdir(parents=True)
    for split in ("train", "test"):
        (tmp_path / "gsm8k" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GSM8K))
    return tmp_path


@pytest.mark.parametrize("name,job", [("online", None), ("search", "search"), ("search", "pool")])
def test_data_root_reaches_the_task_loader(tmp_path, monkeypatch, name, job):
    """rl.online's build, rl.search and its pool sampler read the task's files under data_root."""
    import rl.online
    import rl.sample_pool
    import rl.search
    import tasks.registry

    root = _gsm8k_root(tmp_path / "data")
    real, seen = tasks.registry.make_task, []

    def make_task(cfg, data_root=None):
        seen.append([p.question for p in real(cfg, data_root).problems])
        raise Stop
    monkeypatch.setattr(tasks.registry, "make_task", make_task)
    overrides = ["task=gsm8k", f"data_root={root}", f"trainer.out_dir={tmp_path}/out"]
    cfg = _validated(name, overrides + ([f"job={job}"] if job else []))
    entry = {"online": rl.online.build, "search": rl.search.search, "pool": rl.sample_pool.write_pool}[job or name]
    with pytest.raises(Stop):
        entry(cfg)
    assert seen[0][:3] == [r["question"] for r in GSM8K]


def test_data_root_reaches_prm_train_pool_and_prm_eval(tmp_path, monkeypatch):
    import prm.eval
    from prm.train import load_training_pool

    pb = [{"id": f"g-{i}", "generator": "x", "problem": f"p{i}", "steps": ["a"], "label": -1} for i in range(2)]
    (tmp_path / "processbench").mkdir()
    (tmp_path / "processbench" / "gsm8k.json").write_text(json.dumps(pb))

    class FakePRM:
        def encode(self, question, steps):
            return [0], None
    cfg = _validated("prm_train", ["pool=processbench", f"data_root={tmp_path}"])
    assert sorted(t.question for t in load_training_pool(cfg, FakePRM())) == ["p0", "p1"]

    roots = []
    monkeypatch.setattr(prm.eval, "build_scorer", lambda cfg, stack: (None, "fake"))
    monkeypatch.setattr(prm.eval, "evaluate", lambda scorer, ecfg, root, out_dir, name: roots.append(root))
    with initialize_config_module(config_module="configs", version_base=None):
        prm.eval.main(compose("prm_eval", overrides=[f"data_root={tmp_path}"]))
    assert roots == [str(tmp_path)]


def test_judges_eval_uses_the_run_conventions(tmp_path):
    """trainer.out_dir holds the report, the default ledger and metrics.jsonl; trainer.seed seeds the run."""
    from judges.eval import run

    rows = [{"id": "a", "generator": "x", "problem": "p", "steps": ["2 + 2 = 5"], "label": 0},
            {"id": "b", "generator": "x", "problem": "q", "steps": ["1 + 1 = 2"], "label": -1}]
    (tmp_path / "data" / "processbench").mkdir(parents=True)
    (tmp_path / "data" / "processbench" / "gsm8k.json").write_text(json.dumps(rows))
    with initialize_config_module(config_module="configs", version_base=None):
        cfg = compose("judge_eval", overrides=[f"data_root={tmp_path}/data", f"trainer.out_dir={tmp_path}/out",
                                               "trainer.seed=7"])
    run(cfg)
    assert random.random() == random.Random(7).random()   # the rule judge draws nothing after the seed
    out = tmp_path / "out"
    assert (out / "ledger.sqlite").is_file() and (out / "rule.json").is_file()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # both items right: error found at step 0, the correct one passed -> F1 1.0
    assert len(lines) == 1 and lines[0]["step"] == 0 and lines[0]["gsm8k/f1"] == 1.0 and lines[0]["mean_f1"] == 1.0
    assert lines[0]["gsm8k/paid_calls"] == 2
    run(cfg)   # a rerun rewrites its one line (the report is this run's) and pays nothing
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["gsm8k/paid_calls"] == 0 and lines[0]["gsm8k/from_ledger"] == 2


def test_prm_eval_labels_a_judge_through_judge_ledger_path(tmp_path):
    """prm.eval judge=...: every label persisted in the ledger judge.ledger_path names, never paid twice."""
    import sqlite3

    import prm.eval

    rows = [{"id": "a", "generator": "x", "problem": "p", "steps": ["2 + 2 = 5"], "label": 0},
            {"id": "b", "generator": "x", "problem": "q", "steps": ["1 + 1 = 2"], "label": -1}]
    (tmp_path / "processbench").mkdir()
    (tmp_path / "processbench" / "gsm8k.json").write_text(json.dumps(rows))
    ledger = tmp_path / "l" / "labels.sqlite"
    overrides = ["judge=rule", f"judge.ledger_path={ledger}", f"data_root={tmp_path}", "eval.subsets=[gsm8k]",
                 "eval.prmbench=false", f"trainer.out_dir={tmp_path}/out"]
    with initialize_config_module(config_module="configs", version_base=None):
        cfg = compose("prm_eval", overrides=overrides)
    prm.eval.main(cfg)
    with sqlite3.connect(ledger) as db:
        assert db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 2
    results = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert results["processbench"]["subsets"]["gsm8k"]["f1"] == 1.0
    prm.eval.main(cfg)   # answered from the ledger: no second charge
    with sqlite3.connect(ledger) as db:
        assert db.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == 2


def test_search_builds_its_vllm_backend_with_every_engine_setting(monkeypatch):
    """rl.search (and its pool sampler) build the backend as rl.online does: every rollout.* setting the
    vLLM engine takes arrives there, as every setting rl.online passes must."""
    import inspect

    import core.models
    import rl.engines
    from rl.config import PolicyConfig, RolloutConfig
    from rl.search_policy import make_backend
    from rl.vllm_rollout import VLLMRollout

    seen = {}
    monkeypatch.setattr(core.models, "resolve_path", lambda name: f"/models/{name}")
    monkeypatch.setattr(rl.engines, "make_rollout", lambda name, **kwargs: seen.update(kwargs, name=name))
    rollout = RolloutConfig(backend="vllm", batch_size=5, gpu_memory_utilization=0.5, kv_cache_gb=3, max_model_len=77,
                            dtype="fp16", enforce_eager=False, tensor_parallel_size=2, sleep=True, sync_bucket_mb=64)
    make_backend(PolicyConfig(model="tiny-random-llama", dtype="fp32"), rollout, seed=3)
    engine_keys = set(inspect.signature(VLLMRollout.__init__).parameters) & set(vars(rollout)) - {"colocate"}
    assert engine_keys >= {"enforce_eager", "tensor_parallel_size", "sleep", "sync_bucket_mb", "max_model_len"}
    assert {k: seen[k] for k in engine_keys} == {k: getattr(rollout, k) for k in engine_keys}
    assert (seen["name"], seen["model_dir"], seen["seed"], seen["colocate"]) == ("vllm", "/models/tiny-random-llama", 3, False)
