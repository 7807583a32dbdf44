"""Data sources: a local file under data_root, a parquet file or a hub id through HF `datasets`, with the
same row/field validation on every path. No hub is reachable here: the hub path is exercised by
pointing `datasets.load_dataset`'s hub call at a local JSON file through the real `datasets` json builder."""
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.rows import DataError
from tasks.problems import load_gsm8k
from prm.data import load_processbench

GSM8K_ROWS = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
              {"question": "What is 1,000 + 1?", "answer": "#### 1,001"}]
PB_ROWS = [{"id": "gsm8k-0", "generator": "g", "problem": "p", "steps": ["a", "b"], "label": 1,
            "final_answer_correct": False}]


def write(tmp_path, rows, name):
    jsonl = tmp_path / f"{name}.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    return jsonl, parquet


@pytest.fixture
def fake_hub(monkeypatch):
    """hub id -> local JSONL file, read by datasets' own json builder; records every hub call."""
    files, calls = {}, []
    real = datasets.load_dataset

    def load_dataset(name, config=None, split=None, **kw):
        if name in ("json", "parquet"):
            return real(name, config, split=split, **kw)
        calls.append((name, config, split))
        return real("json", data_files=str(files[(name, config, split)]), split="train")
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return files, calls


def test_gsm8k_from_a_file_a_parquet_file_and_the_hub_are_the_same(tmp_path, fake_hub):
    jsonl, parquet = write(tmp_path, GSM8K_ROWS, "gsm8k")
    files, calls = fake_hub
    files[("openai/gsm8k", "main", "test")] = jsonl
    plain = load_gsm8k("test", source=str(jsonl))
    assert [p.reference_answer for p in plain] == ["7", "1001"]
    assert load_gsm8k("test", source=str(parquet)) == plain
    assert load_gsm8k("test", source="hf:openai/gsm8k:main") == plain
    assert calls == [("openai/gsm8k", "main", "test")]


def test_processbench_hub_split_is_the_subset(tmp_path, fake_hub):
    jsonl, _ = write(tmp_path, PB_ROWS, "pb")
    files, calls = fake_hub
    files[("Qwen/ProcessBench", None, "gsm8k")] = jsonl
    items = load_processbench("gsm8k", source="hf:Qwen/ProcessBench")
    assert [(t.question, t.steps, t.first_error) for t in items] == [("p", ["a", "b"], 1)]
    assert calls == [("Qwen/ProcessBench", None, "gsm8k")]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "hub"])
def test_bad_rows_name_the_row_and_field_on_every_source(tmp_path, fake_hub, kind):
    rows = [GSM8K_ROWS[0], {"question": "no answer here", "answer": "7"}]
    jsonl, parquet = write(tmp_path, rows, "bad")
    files, _ = fake_hub
    files[("openai/gsm8k", "main", "test")] = jsonl
    source = {"jsonl": str(jsonl), "parquet": str(parquet), "hub": "hf:openai/gsm8k:main"}[kind]
    with pytest.raises(DataError, match=r"(line|row) 2, field 'answer': no '#### N' line"):
        load_gsm8k("test", source=source)
    assert len(load_gsm8k("test", source=source, skip_bad_rows=True)) == 1


def test_missing_parquet_file_is_named(tmp_path):
    with pytest.raises(DataError, match="missing.parquet: file not found"):
        load_gsm8k("test", source=str(tmp_path / "missing.parquet"))
