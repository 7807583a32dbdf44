"""Library features that were bench scripts: `rl.search job=pool` samples a PRM pool from the search
policy; the `rule_outcome` judge labels it through the ledger from the rule judge plus the verified answer."""
import json
import sqlite3

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from judges.registry import make_judge
from judges.ledger import LabelLedger
from core.config import validate
from prm.data import load_trajectories_jsonl
from rl.search import SearchConfig, main
from rl.search_policy import load_task

STEPS_FALSE = ["2 + 3 = 6", "The answer is 6."]
STEPS_TRUE = ["2 + 3 = 5", "The answer is 5."]


def test_rule_outcome_verdicts_by_hand_and_through_the_ledger(tmp_path):
    records = [{"question": "q1", "steps": STEPS_FALSE, "meta": {"correct": False}},   # false equation at step 0
               {"question": "q2", "steps": STEPS_TRUE, "meta": {"correct": False}},    # no false equation, wrong answer
               {"question": "q3", "steps": STEPS_TRUE, "correct": True}]               # right
    judge = make_judge({"name": "rule_outcome"}, records=records)
    items = [(r["question"], r["steps"]) for r in records]
    with LabelLedger(str(tmp_path / "l.sqlite")) as ledger:
        verdicts = ledger.label(judge, items)
        assert [v.first_error for v in verdicts] == [0, 1, -1]
        assert [v.from_ledger for v in ledger.label(judge, items)] == [True, True, True]   # never paid twice
    with sqlite3.connect(tmp_path / "l.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 3


def test_rule_outcome_reads_judge_records_path(tmp_path):
    """judge.records_path keeps each record's verified answer; a record without one names file, line, field."""
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"question": "q2", "steps": STEPS_TRUE, "meta": {"correct": False}}) + "\n"
                    + json.dumps({"question": "q3", "steps": STEPS_TRUE, "correct": True}) + "\n")
    judge = make_judge({"name": "rule_outcome", "records_path": str(path)})
    assert [judge.judge(q, STEPS_TRUE).first_error for q in ("q2", "q3")] == [1, -1]
    path.write_text(json.dumps({"question": "q4", "steps": STEPS_TRUE}) + "\n")
    with pytest.raises(ValueError, match=r"line 1.*correct"):
        make_judge({"name": "rule_outcome", "records_path": str(path)})


def test_search_job_pool_writes_an_unlabelled_pool_with_verified_answers(tmp_path, capsys):
    out = tmp_path / "pool.jsonl"
    overrides = ["job=pool", f"pool.out={out}", "pool.n=2", "pool.exclude_limit=1", "task.limit=3",
                 "policy.model=tiny-random-llama", "policy.dtype=fp32", "rollout=hf", "rollout.max_new_tokens=8",
                 "prm.backbone=tiny-random-llama", f"trainer.out_dir={tmp_path}"]
    with initialize_config_module("configs", version_base=None):
        cfg = compose("search", overrides=overrides)
    search = validate(OmegaConf.to_container(cfg, resolve=True), SearchConfig)
    assert search.job == "pool" and (search.task.name, search.task.split, search.task.limit) == ("arithmetic", "test", 3)
    main(cfg)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pool = load_trajectories_jsonl(out)
    # 3 test problems (offset 0, limit 3); the held-out slice (same seed, offset 0, limit 1) is the first of
    # them: exactly 2 problems kept, 2 samples each, and no sample of the held-out problem
    assert "[pool] 2 problems (1 overlap the held-out slice and are skipped), 2 samples each" in capsys.readouterr().out
    task = load_task(search.task)[0]   # the arithmetic group's problems (rl.online's), test split
    assert sorted({r["question"] for r in rows}) == sorted(p.question for p in task[1:])
    assert len(rows) == 4 and [r["source"].rsplit("#", 1)[1] for r in rows] == ["0", "1", "0", "1"]
    assert all(t.first_error is None for t in pool) and all(isinstance(t.meta["correct"], bool) for t in pool)
