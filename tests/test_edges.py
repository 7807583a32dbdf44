"""Inputs at the edges: answer golds math-verify would read only in part, loaders (a .json of JSON
lines, a `meta` that is not an object, an oversized row), prm.train reading its pool before any model,
a rollout config that cannot run, and the ProcessBench F1 the project reports when nothing is right."""
from __future__ import annotations

import json
import math

import pytest

import core.rows
from core.answers import AnswerChecker
from core.config import ConfigError
from core.rows import DataError
from judges.metrics import processbench_f1
from prm.data import load_trajectories_jsonl


@pytest.fixture(scope="module")
def checker():
    c = AnswerChecker(timeout_s=10.0)
    yield c
    c.close()


@pytest.mark.parametrize("gold,pred,expected", [
    (r"\frac{3}{2}\hbar\omega $", "1.5", False),                   # a stray $: only 3/2 was read
    (r"\frac{3}{2}\hbar\omega \quad ($n = 1$)", "1", False),        # only n = 1 was read
    (r"\frac{3}{2}\hbar\omega $", r"\frac{3}{2}\hbar\omega", True),
    (r"\frac{1}{2}$ $", "0.5", True),                              # an empty $ $ pair is no answer
    (r"$ $\frac{1}{2}", r"\frac{1}{2}", True),
    (r"5 \text{ cm}", "5", True),                                  # units in \text stay a number
    (r"2\pi", r"2\pi", True),
    (r"(-\infty, 3) \cup (4, \infty)", r"(-\infty,3)\cup(4,\infty)", True),
])
def test_a_gold_read_only_in_part_accepts_no_bare_number(checker, gold, pred, expected):
    assert checker.check(gold, pred) is expected


def write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def test_a_json_file_holding_json_lines_is_read(tmp_path):
    rows = [{"question": "q", "steps": ["a"], "first_error": -1}, {"question": "r", "steps": ["b"], "first_error": 0}]
    assert [t.question for t in load_trajectories_jsonl(write(tmp_path / "pool.json", rows))] == ["q", "r"]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    assert [t.question for t in load_trajectories_jsonl(tmp_path / "list.json")] == ["q", "r"]


def test_a_meta_that_is_not_an_object_names_file_line_and_field(tmp_path):
    path = write(tmp_path / "pool.jsonl", [{"question": "q", "steps": ["a"], "meta": {"k": 1}},
                                           {"question": "r", "steps": ["b"], "meta": ["correct"]}])
    with pytest.raises(DataError, match=r"pool.jsonl, line 2, field 'meta': expected an object, got list"):
        load_trajectories_jsonl(path)


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_a_row_over_the_size_bound_is_a_bad_row(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(core.rows, "MAX_ROW_BYTES", 200)
    rows = [{"question": "q", "steps": ["a"]}, {"question": "big", "steps": ["x" * 500]}]
    path = tmp_path / f"pool.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(rows, indent=1))
    else:
        write(path, rows)
    with pytest.raises(DataError, match=r"over the limit of 200"):
        load_trajectories_jsonl(path)
    assert [t.question for t in load_trajectories_jsonl(path, skip_bad_rows=True)] == ["q"]


def test_prm_train_fails_on_a_bad_pool_row_before_loading_a_model(tmp_path, monkeypatch):
    from prm.model import EnsemblePRM
    from prm.train import train
    from tests.test_prm_train import config

    def must_not_load(*args, **kwargs):
        raise AssertionError("the PRM was built before the pool was read")
    monkeypatch.setattr(EnsemblePRM, "from_config", must_not_load)
    pool = write(tmp_path / "pool.jsonl", [{"question": "q", "steps": ["a"], "first_error": -1},
                                           {"question": "r", "steps": ["b"], "first_error": 0, "meta": [1]}])
    with pytest.raises(DataError, match=r"pool.jsonl, line 2, field 'meta'"):
        train(config(tmp_path, **{"pool.name": "jsonl", "pool.path": str(pool), "pool.max_tokens": None}))


@pytest.mark.parametrize("key", ["n", "max_new_tokens", "batch_size"])
def test_a_rollout_that_cannot_run_fails_at_validation(key):
    from core.config import validate
    from rl.config import OnlineConfig
    with pytest.raises(ConfigError, match=f"rollout.{key} must be >= 1, got 0"):
        validate({"rollout": {key: 0}}, OnlineConfig)


def test_processbench_f1_with_nothing_right_is_0_where_the_official_script_gives_nan():
    import numpy as np
    preds, labels = [1, 2, 0], [0, -1, -1]  # the erroneous item mis-named, both correct ones flagged
    ours = processbench_f1(preds, labels)
    acc1, acc2 = np.float64(0.0), np.float64(0.0)
    with np.errstate(invalid="ignore"):
        official = 2 * acc1 * acc2 / (acc1 + acc2)  # the official script's formula
    assert math.isnan(official)
    assert ours["acc_error"] == 0.0 and ours["acc_correct"] == 0.0 and ours["f1"] == 0.0


def test_rl_online_reads_its_judge_records_before_loading_a_model(tmp_path, monkeypatch):
    import rl.policy
    import rl.online
    from tests.test_rl_loop import tiny_config

    def must_not_load(*args, **kwargs):
        raise AssertionError("the policy was built before the judge's records were read")
    monkeypatch.setattr(rl.policy, "PolicyTrainer", must_not_load)
    records = write(tmp_path / "labels.jsonl", [{"question": "q", "steps": ["a"], "first_error": 3}])
    cfg = tiny_config(tmp_path / "run", judge={"name": "oracle", "records_path": str(records)})
    with pytest.raises(DataError, match=r"labels.jsonl, line 1, field 'first_error'"):
        rl.online.run(cfg)
