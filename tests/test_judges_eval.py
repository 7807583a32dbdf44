"""python -m judges.eval: ProcessBench through the ledger, config validation, malformed data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from judges.eval import load_processbench, run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

ITEMS = [
    {"id": "t-0", "generator": "x", "problem": "p0", "steps": ["2 + 2 = 4", "4 * 3 = 13"], "label": 1},
    {"id": "t-1", "generator": "x", "problem": "p1", "steps": ["2 + 2 = 5"], "label": 0},
    {"id": "t-2", "generator": "x", "problem": "p2", "steps": ["The answer is 4.", "Then 6 - 2 = 4"], "label": 0},
    {"id": "t-3", "generator": "x", "problem": "p3", "steps": ["1 + 1 = 2"], "label": -1},
    {"id": "t-4", "generator": "x", "problem": "p4", "steps": ["So 3 * 3 = 9."], "label": -1},
]


def write_data(root: Path, rows=ITEMS, subset="gsm8k") -> Path:
    (root / "processbench").mkdir(parents=True, exist_ok=True)
    path = root / "processbench" / f"{subset}.json"
    path.write_text(json.dumps(rows))
    return root


def cfg_for(tmp_path, *overrides):
    with initialize_config_module(config_module="configs", version_base=None):
        return compose("judge_eval", overrides=[f"judge.ledger_path={tmp_path}/ledger.sqlite", f"trainer.out_dir={tmp_path}/out",
                                                *overrides])


def test_rule_judge_on_handmade_subset(tmp_path, capsys):
    data = write_data(tmp_path / "data")
    report = run(cfg_for(tmp_path, f"data_root={data}"))
    r = report["subsets"]["gsm8k"]
    # errors: t-0 and t-1 named, t-2 missed (no false equation) -> 2/3; correct items 2/2
    assert r["acc_error"] == pytest.approx(2 / 3) and r["acc_correct"] == 1.0
    assert r["f1"] == pytest.approx(0.8) and r["paid_calls"] == 5 and r["from_ledger"] == 0
    assert report["mean_f1"] == pytest.approx(0.8)
    saved = json.loads((tmp_path / "out" / "rule.json").read_text())
    assert saved["subsets"]["gsm8k"]["f1"] == pytest.approx(0.8) and saved["judge"] == "rule:v1"
    assert "mean F1" in capsys.readouterr().out
    again = run(cfg_for(tmp_path, f"data_root={data}"))  # answered from the ledger
    assert again["subsets"]["gsm8k"]["from_ledger"] == 5 and again["subsets"]["gsm8k"]["paid_calls"] == 0


def test_oracle_scores_perfectly_and_budget_limits(tmp_path):
    data = write_data(tmp_path / "data")
    assert run(cfg_for(tmp_path, f"data_root={data}", "judge=oracle"))["subsets"]["gsm8k"]["f1"] == 1.0
    report = run(cfg_for(tmp_path / "b", f"data_root={data}", "judge=rule", "judge.max_labels=2"))
    assert report["subsets"]["gsm8k"]["unlabelled_budget"] == 3 and report["subsets"]["gsm8k"]["n"] == 2


def test_bad_judge_config_fails_at_start(tmp_path):
    data = write_data(tmp_path / "data")
    with pytest.raises(ValueError, match="temperature"):
        run(cfg_for(tmp_path, f"data_root={data}", "judge=llm", "judge.temperature=hot"))
    with pytest.raises(ValueError, match="bogus"):
        run(cfg_for(tmp_path, f"data_root={data}", "+judge.bogus=1"))
    with pytest.raises(ValueError, match=r"eval.subsets must be .*unknown: \['gsm9k'\]"):
        run(cfg_for(tmp_path, f"data_root={data}", "eval.subsets=[gsm9k]"))


@pytest.mark.parametrize("row,field", [
    ({"id": "a", "problem": "p", "steps": ["s"], "label": 1}, "label"),
    ({"id": "a", "problem": "p", "steps": "s", "label": 0}, "steps"),
    ({"id": "a", "steps": ["s"], "label": 0}, "problem"),
    ({"id": 5, "problem": "p", "steps": ["s"], "label": 0}, "id"),
    ({"id": "a", "problem": "p", "steps": ["s"]}, "label"),
])
def test_malformed_row_names_file_row_and_field(tmp_path, row, field):
    path = write_data(tmp_path, ITEMS[:2] + [row]) / "processbench" / "gsm8k.json"
    with pytest.raises(ValueError, match=rf"gsm8k.json, line \d+ \(item 3\), field '{field}'"):
        load_processbench(path)


def test_limit_takes_both_classes(tmp_path):
    path = write_data(tmp_path) / "processbench" / "gsm8k.json"
    assert [r["id"] for r in load_processbench(path, limit=2)] == ["t-0", "t-2"]


@pytest.mark.skipif(not (DATA / "processbench" / "gsm8k.json").exists(), reason="shared data not mounted")
def test_command_line_on_real_processbench(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "judges.eval", "judge=rule", "eval.subsets=[gsm8k,math]", "eval.limit=40",
                           f"judge.ledger_path={tmp_path}/l.sqlite", f"trainer.out_dir={tmp_path}/out"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mean F1" in proc.stdout
    report = json.loads((tmp_path / "out" / "rule.json").read_text())
    assert set(report["subsets"]) == {"gsm8k", "math"} and report["subsets"]["gsm8k"]["n"] == 40


def test_llm_judge_through_the_command_against_a_scripted_server(tmp_path):
    from tests.fake_openai_server import FakeOpenAIServer, Reply

    data = write_data(tmp_path / "data")
    labels = {r["problem"]: r["label"] for r in ITEMS}

    def critic(req):  # right on every item except p2, where it rambles (invalid)
        if "[Problem]" not in req.prompt:  # the start-up check's tiny request
            return Reply("\\boxed{-1}", prompt_tokens=30, completion_tokens=1)
        problem = req.prompt.split("[Problem]\n\n")[1].split("\n")[0]
        return Reply("hmm" if problem == "p2" else f"\\boxed{{{labels[problem]}}}", prompt_tokens=50,
                     completion_tokens=5)

    with FakeOpenAIServer(critic) as server:
        server.served = ["default"]
        report = run(cfg_for(tmp_path, f"data_root={data}", "judge=llm", f"judge.base_url={server.base_url}",
                             "judge.max_concurrency=2", "judge.backoff_base_s=0.01"))
    r = report["subsets"]["gsm8k"]
    assert r["invalid"] == 1 and r["acc_error"] == pytest.approx(2 / 3) and r["acc_correct"] == 1.0
    assert (r["paid_calls"], r["prompt_tokens"], r["completion_tokens"]) == (5, 250, 25)
    assert report["ledger_stats"]["invalid"] == 1 and report["judge"].startswith("llm:default|")
    assert report["ledger_stats"]["calls"] == 5 + 1  # the start-up check is charged too
    assert len(server.requests) == 6 and server.model_lists == 1
    assert server.requests[0].body["max_tokens"] == 1  # checked before the first label


def test_a_model_the_server_does_not_serve_fails_at_start_up_naming_the_served_ones(tmp_path):
    from judges import JudgeRequestError
    from tests.fake_openai_server import FakeOpenAIServer

    data = write_data(tmp_path / "data")
    with FakeOpenAIServer() as server:
        server.served = ["smollm2"]
        with pytest.raises(JudgeRequestError, match=r"judge.model='default'.*\['smollm2'\]"):
            run(cfg_for(tmp_path, f"data_root={data}", "judge=llm", f"judge.base_url={server.base_url}"))
        assert server.model_lists == 1 and len(server.requests) == 0  # nothing paid
