"""prm.train end to end on tiny-random-llama: budgets, resume after an interruption, filter, 2 ranks."""
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from prm.config import PRMTrainConfig
from core.config import validate
from prm.train import train

ROOT = Path(__file__).resolve().parent.parent


def config(tmp_path, name="run", **kw) -> PRMTrainConfig:
    base = {"prm": {"backbone": "tiny-random-llama", "dtype": "fp32", "num_heads": 4, "train_mode": "frozen",
                    "head_lr": 1e-2, "batch_size": 6},
            "pool": {"name": "processbench", "subset": "gsm8k", "limit": 24, "max_tokens": 1024},
            "trainer": {"out_dir": str(tmp_path / name), "progress": False, "save_every": 1, "resume": "auto"},
            "run_eval": False, "epochs": 1}
    for key, value in kw.items():
        section, _, field = key.partition(".")
        if field:
            base.setdefault(section, {})[field] = value
        else:
            base[key] = value
    return validate(base, PRMTrainConfig)


def ledger_rows(out) -> int:
    with sqlite3.connect(Path(out) / "ledger.sqlite") as db:
        return db.execute("select count(*) from labels").fetchone()[0]


@pytest.mark.parametrize("mode,budget,expected", [("random", 0.5, 12), ("all", 0.25, 24), ("random", 5, 5)])
def test_budget_is_the_number_of_labels_revealed(tmp_path, mode, budget, expected):
    summary = train(config(tmp_path, **{"select.mode": mode, "select.budget": budget}))
    assert summary["labels_used"] == expected == ledger_rows(tmp_path / "run")


def test_train_on_pool_is_the_command_run_on_trajectories_you_hold(tmp_path):
    """A pool already in memory and a heads-only PRM over step features computed beforehand train the same
    heads as the command (which loads cfg.pool and runs the backbone itself); job=filter is refused."""
    import torch

    from prm.features import FeatureCache
    from prm.model import EnsemblePRM, feature_dim
    from prm.train import load_training_pool, train_on_pool
    kw = {"select.mode": "random", "select.budget": 0.5}
    command = train(config(tmp_path, "command", **kw))
    cfg = config(tmp_path, "api", **kw)
    backbone = EnsemblePRM(cfg.prm)
    pool = load_training_pool(cfg, backbone)
    features = FeatureCache(cfg.prm.max_length)   # as the command's learner builds it
    features.compute(backbone, [t.question for t in pool], [t.steps for t in pool], cfg.prm.batch_size)
    heads = EnsemblePRM.heads_only(cfg.prm, features.width - feature_dim(cfg.prm, 0))
    summary = train_on_pool(cfg, pool, prm=heads, features=features)
    assert (summary["labels_used"], summary["updates"]) == (command["labels_used"], command["updates"]) == (12, 4)
    assert ledger_rows(tmp_path / "api") == 12
    mine, theirs = (load_file(str(tmp_path / run / "prm" / "heads.safetensors")) for run in ("api", "command"))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with pytest.raises(ValueError, match="job=filter reads cfg.pool"):
        train_on_pool(config(tmp_path, "filter", job="filter"), pool)


def test_feature_cache_of_other_step_features_is_recomputed(tmp_path, capsys):
    """One feature_cache file, two runs: hidden, then hidden_logprob (2 more columns). The second must not
    feed H-wide cached features to heads that read H + 2: it says so and computes them again."""
    cache = str(tmp_path / "features.safetensors")
    train(config(tmp_path, "a", feature_cache=cache, **{"select.mode": "all"}))
    summary = train(config(tmp_path, "b", feature_cache=cache, **{"select.mode": "all",
                                                                  "prm.step_features": "hidden_logprob"}))
    assert summary["labels_used"] == 24 and "computing them again" in capsys.readouterr().out
    from prm.features import FeatureCache
    assert FeatureCache.load(cache).width == 64 + 2  # tiny-random-llama's hidden size + the log-prob columns


def test_judge_ledger_path_and_budget_are_honoured(tmp_path):
    # the judge config's ledger settings, as every labelling command reads them: max_labels=2 pays 2
    ledger = tmp_path / "shared" / "labels.sqlite"
    summary = train(config(tmp_path, **{"select.mode": "all", "select.budget": 1.0},
                           judge={"name": "oracle", "ledger_path": str(ledger), "max_labels": 2}))
    assert summary["labels_used"] == 2
    assert not (tmp_path / "run" / "ledger.sqlite").exists()
    with sqlite3.connect(ledger) as db:
        assert db.execute("select count(*) from labels").fetchone()[0] == 2
    with pytest.raises(ValueError, match="Key 'ledger' not in 'PRMTrainConfig'"):   # one key, not two
        config(tmp_path, "other", ledger=str(tmp_path / "x.sqlite"))


def test_active_never_exceeds_budget_and_pays_only_selected(tmp_path):
    summary = train(config(tmp_path, **{"select.mode": "uncertain", "select.budget": 0.25, "prm.delta_pred": 0.99}))
    assert 0 < summary["labels_used"] <= 6
    assert ledger_rows(tmp_path / "run") == summary["labels_used"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 4 and all(m["selected"] <= m["n"] for m in metrics)


def test_save_every_zero_keeps_only_the_last_checkpoint(tmp_path):
    """trainer.save_every counts training steps in every command, 0 = no periodic checkpoint (not a division by zero)."""
    summary = train(config(tmp_path, **{"select.mode": "all", "trainer.save_every": 0}))
    steps = sorted(d.name for d in (tmp_path / "run" / "ckpt").iterdir() if d.name.startswith("step"))
    assert steps == [f"step{summary['updates']}"]


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    kw = {"select.mode": "uncertain", "select.budget": 0.5, "epochs": 3, "prm.delta_pred": 0.99}
    whole = train(config(tmp_path, "whole", **kw))
    stopped = train(config(tmp_path, "split", stop_after_batches=5, **kw))
    assert stopped["stopped_at"] == 5
    resumed = train(config(tmp_path, "split", **kw))
    assert resumed["updates"] == whole["updates"] and resumed["labels_used"] == whole["labels_used"]
    a = load_file(str(tmp_path / "whole" / "prm" / "heads.safetensors"))
    b = load_file(str(tmp_path / "split" / "prm" / "heads.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, whole["updates"] + 1))   # continued at update 6, nothing redone


def test_filter_writes_the_uncertain_part(tmp_path):
    train(config(tmp_path, "trained", **{"select.mode": "all"}))
    out = tmp_path / "uncertain.jsonl"
    summary = train(config(tmp_path, "filter", job="filter", filter_out=str(out),
                           **{"prm.path": str(tmp_path / "trained" / "prm"), "prm.delta_std": 0.0}))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["uncertain"] == len(rows) > 0 and {"question", "steps", "prm_mean", "prm_std"} <= set(rows[0])


@pytest.mark.slow
def test_two_ranks_with_torchrun_gloo(tmp_path):
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    with socket.socket() as sock:  # a free port (torchrun's --master_port 0 hangs the gloo rendezvous)
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "prm.train", "prm=tiny", "pool=processbench", "pool.limit=20", "trainer.progress=false",
           f"trainer.out_dir={out}", "select.mode=random", "select.budget=0.5", "run_eval=false", "epochs=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["heads_sum"] == r1["heads_sum"]                  # gradients averaged: identical weights
    assert not set(r0["shard"]) & set(r1["shard"]) and len(r0["shard"]) == len(r1["shard"]) == 10
    assert r0["labels_local"] + r1["labels_local"] == 10
    assert json.loads((out / "summary.json").read_text())["labels_used"] == 10


def test_sigkilled_run_resumes_to_the_same_heads(tmp_path):
    """A real kill (SIGKILL mid-run, whatever it was doing) and a rerun of the same command end with
    the heads of an uninterrupted run; labels already in the ledger are not revealed again."""
    import signal
    import time

    def command(out):
        return [sys.executable, "-m", "prm.train", "prm=tiny", "pool=processbench", "pool.limit=24",
                "prm.batch_size=4", "select.mode=uncertain", "select.budget=0.5", "epochs=4", "prm.delta_pred=0.99",
                "run_eval=false", "trainer.progress=false", "trainer.save_every=1", "trainer.deepspeed=false",
                f"trainer.out_dir={out}", f"hydra.run.dir={out}/hydra"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "whole"), cwd=ROOT, env=env, check=True, capture_output=True)
    proc = subprocess.Popen(command(tmp_path / "killed"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    labels_before = ledger_rows(tmp_path / "killed")
    assert 0 < labels_before
    done = subprocess.run(command(tmp_path / "killed"), cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    assert "resumed from" in done.stdout
    a = load_file(str(tmp_path / "whole" / "prm" / "heads.safetensors"))
    b = load_file(str(tmp_path / "killed" / "prm" / "heads.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
    assert ledger_rows(tmp_path / "killed") == ledger_rows(tmp_path / "whole")


def test_labels_used_counts_valid_labels_and_the_judge_is_checked_first(tmp_path):
    """An llm judge that rambles on some items: their invalid verdicts are paid (in the ledger) but are
    not labels used; the start-up check comes before the first label."""
    from tests.fake_openai_server import FakeOpenAIServer, Reply

    def critic(req):
        if "[Problem]" not in req.prompt:
            return Reply("\\boxed{-1}")
        return Reply("hmm" if len(req.prompt) % 3 == 0 else "\\boxed{-1}")
    with FakeOpenAIServer(critic) as server:
        server.served = ["default"]
        summary = train(config(tmp_path, **{"select.mode": "all", "select.budget": 1.0},
                               judge={"name": "llm", "base_url": server.base_url, "backoff_base_s": 0.01}))
        invalid = sum(r.body["max_tokens"] > 1 and len(r.prompt) % 3 == 0 for r in server.requests)
        assert server.requests[0].body["max_tokens"] == 1 and len(server.requests) == 1 + 24
    assert 0 < invalid < 24 and ledger_rows(tmp_path / "run") == 24
    assert summary["labels_used"] == 24 - invalid and summary["labels_invalid"] == invalid


def test_train_on_pool_with_outcomes_trains_an_outcome_reward_model(tmp_path):
    """outcomes=: every scored step of a trajectory learns its verdict. The features carry the verdict (+1 / -1
    in every step's first column) and the first errors say nothing of it: the ORM scores every step of the
    right trajectories high and of the wrong ones low, the PRM trained on the same pool does not; 19 epochs
    replay the pool in shuffled batches, so a verdict paired with another trajectory would show."""
    import torch

    from judges.base import item_key
    from prm.features import FeatureCache
    from prm.model import EnsemblePRM
    from prm.train import train_on_pool
    from tasks.problems import Trajectory
    gen = torch.Generator().manual_seed(0)
    pool, outcomes, cache = [], [], FeatureCache(512, dtype=torch.float32)
    for i in range(48):
        t = Trajectory(f"q{i}", ["a", "b", "c"], first_error=[-1, 0, 1][i % 3])
        outcome = (i // 3) % 2 == 0   # right and wrong alike at every first error
        feats = torch.randn(3, 8, generator=gen) * 0.1
        feats[:, 0] = 1.0 if outcome else -1.0
        cache.store[item_key(t.question, t.steps)] = feats
        pool.append(t), outcomes.append(outcome)

    def trained(name, outcomes):
        cfg = config(tmp_path, name, **{"select.mode": "all", "prm.head_lr": 3e-2})
        cfg.epochs = 20
        heads = EnsemblePRM.heads_only(cfg.prm, 8)
        train_on_pool(cfg, pool, prm=heads, features=cache, outcomes=outcomes)
        scores = heads.score([t.question for t in pool], [t.steps for t in pool],
                             features=[cache.get(t.question, t.steps) for t in pool])
        return [s.mean for s in scores]
    orm = trained("orm", outcomes)
    assert all(min(s) > 0.8 if o else max(s) < 0.2 for s, o in zip(orm, outcomes))
    prm = trained("prm", None)
    assert not all(min(s) > 0.8 if o else max(s) < 0.2 for s, o in zip(prm, outcomes))
    with pytest.raises(ValueError, match="2 outcomes for 48 trajectories"):
        train_on_pool(config(tmp_path, "short"), pool, prm=EnsemblePRM.heads_only(config(tmp_path).prm, 8),
                      features=cache, outcomes=[True, False])
