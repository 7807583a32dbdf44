"""Loaders on the real shared files, and on broken copies of them."""
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import rows as core_rows
from prm import data
from tasks import problems
from core.rows import DataError

FIXTURES = core_rows.DEFAULT_DATA_ROOT / "fixtures"


@pytest.mark.parametrize("subset,rows", [("gsm8k", 400), ("math", 1000), ("olympiadbench", 1000), ("omnimath", 1000)])
def test_processbench_row_counts(subset, rows):
    items = data.load_processbench(subset)
    assert len(items) == rows
    assert all(t.first_error is not None and -1 <= t.first_error < len(t.steps) for t in items)
    assert {t.first_error == -1 for t in items} == {True, False}


def test_problem_loaders_row_counts_and_answers():
    gsm = problems.load_gsm8k("test")
    assert len(gsm) == 1319
    assert gsm[0].reference_answer == "18" and gsm[0].question.startswith("Janet")
    assert all(p.reference_answer and "," not in p.reference_answer for p in gsm)
    math = problems.load_math500()
    assert len(math) == 500 and math[0].reference_answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert len(problems.load_gsm8k("train")) == 7473


def test_prm800k_regrouping():
    trajs = data.load_prm800k("train")
    # See load_prm800k's docstring for how these come about (leaf rows, merged duplicates).
    assert len(trajs) == 32021
    assert len({t.question for t in trajs}) == 900
    # Only the last step of a trajectory can be wrong.
    assert all(t.first_error in (-1, len(t.steps) - 1) for t in trajs)
    bad = sum(t.first_error != -1 for t in trajs) / len(trajs)
    assert 0.45 < bad < 0.60
    # Neutral steps counted as errors can only add errors.
    strict = data.load_prm800k("test", neutral_as="error")
    lenient = data.load_prm800k("test")
    assert sum(t.first_error != -1 for t in strict) > sum(t.first_error != -1 for t in lenient)
    with pytest.raises(ValueError, match="neutral_as"):
        data.load_prm800k("test", neutral_as="maybe")


def test_prm800k_broken_rating_names_row_and_field(tmp_path):
    (tmp_path / "prm800k").mkdir()
    table = pq.read_table(core_rows.DEFAULT_DATA_ROOT / "prm800k" / "phase1_test.stepwise-critic.parquet").slice(0, 20)
    ratings = table.column("rating").to_pylist()
    ratings[7] = 5.0
    table = table.set_column(table.schema.get_field_index("rating"), "rating", pa.array(ratings))
    path = tmp_path / "prm800k" / "phase1_test.stepwise-critic.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError, match=r"row 8, field 'rating'"):
        data.load_prm800k("test", root=tmp_path)
    assert len(data.load_prm800k("test", root=tmp_path, skip_bad_rows=True)) > 0
    assert len(core_rows.last_skipped) == 1


def test_prmbench_loader():
    items = data.load_prmbench()
    assert len(items) == 394 + 48   # every row, plus a `correct` item per redundency row (its original process)
    for t in items:
        errs = t.meta["error_steps"]
        assert errs == sorted(errs) and all(0 <= e < len(t.steps) for e in errs)
        assert t.first_error == (errs[0] if errs else -1)


def _broken_processbench(tmp_path, mutate):
    (tmp_path / "processbench").mkdir()
    rows = json.loads((core_rows.DEFAULT_DATA_ROOT / "processbench" / "gsm8k.json").read_text())[:10]
    mutate(rows)
    (tmp_path / "processbench" / "gsm8k.json").write_text(json.dumps(rows))
    return tmp_path


@pytest.mark.parametrize("mutate,row,field_", [
    (lambda r: r[3].pop("problem"), 3, "problem"),
    (lambda r: r[4].__setitem__("steps", []), 4, "steps"),
    (lambda r: r[5].__setitem__("label", 99), 5, "label"),
    (lambda r: r[6]["steps"].__setitem__(0, "  "), 6, "steps"),
])
def test_processbench_broken_copies(tmp_path, mutate, row, field_):
    root = _broken_processbench(tmp_path, mutate)
    with pytest.raises(DataError) as err:
        data.load_processbench("gsm8k", root=root)
    assert "gsm8k.json, line 1 " in str(err.value) and f"(item {row + 1})" in str(err.value)  # 1-based
    assert f"'{field_}'" in str(err.value)
    assert len(data.load_processbench("gsm8k", root=root, skip_bad_rows=True)) == 9


def test_invalid_json_line_is_named(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    lines = (core_rows.DEFAULT_DATA_ROOT / "gsm8k" / "test.jsonl").read_text().splitlines()[:5]
    lines[2] = lines[2][:40]
    lines[3] = json.dumps({"question": "q", "answer": "no final line"})
    (tmp_path / "gsm8k" / "test.jsonl").write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"test.jsonl, line 3: invalid JSON"):
        problems.load_gsm8k(root=tmp_path)
    got = problems.load_gsm8k(root=tmp_path, skip_bad_rows=True)
    assert len(got) == 3 and len(core_rows.last_skipped) == 2
    assert "line 4, field 'answer'" in core_rows.last_skipped[1]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        problems.load_math500(root=tmp_path)


def test_math_shepherd_fixture():
    items = data.load_math_shepherd(FIXTURES / "samples_math-shepherd.jsonl")
    assert len(items) == 7
    first = items[0]
    assert first.question.endswith("in a year?") and len(first.steps) == 5
    assert first.first_error == 4 and first.steps[1].startswith("She spends 40 * 3")
    assert all("ки" not in s for t in items for s in t.steps)


def test_math_shepherd_broken_label(tmp_path):
    rec = json.loads((FIXTURES / "samples_math-shepherd.jsonl").read_text().splitlines()[0])
    rec["label"] = rec["label"].replace(" +\n", " ?\n", 1)
    path = tmp_path / "shep.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=r"line 1, field 'label'"):
        data.load_math_shepherd(path)


def test_trl_format_roundtrip_and_errors(tmp_path):
    rows = [{"prompt": "1+1?", "completions": ["1+1=2", "So 2."], "labels": [True, True]},
            {"prompt": "2*3?", "completions": ["2*3=5", "So 5."], "labels": [False, False]},
            {"prompt": "bad", "completions": ["x"], "labels": [True, False]}]
    path = tmp_path / "trl.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"line 3, field 'labels'"):
        data.load_trl_prm(path)
    got = data.load_trl_prm(path, skip_bad_rows=True)
    assert [t.first_error for t in got] == [-1, 0]


def test_own_jsonl_format_roundtrip(tmp_path):
    trajs = data.load_processbench("gsm8k", limit=5)
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(t.to_json()) for t in trajs))
    back = data.load_trajectories_jsonl(path)
    assert [(t.question, t.steps, t.first_error) for t in back] == [(t.question, t.steps, t.first_error) for t in trajs]
    shutil.copy(path, tmp_path / "u.jsonl")
    assert data.load_pool("jsonl", str(tmp_path / "u.jsonl"))[0].steps == trajs[0].steps


def test_non_utf8_bytes_name_file_and_line_and_honour_skip(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    lines = [json.dumps({"question": f"q{i}", "answer": f"work\n#### {i}"}).encode() for i in range(4)]
    lines[1] = lines[1].replace(b"q1", b"q\xff\xfe1")
    (tmp_path / "gsm8k" / "test.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"test.jsonl, line 2: not UTF-8 \(byte 0xff"):
        problems.load_gsm8k(root=tmp_path)
    assert [p.question for p in problems.load_gsm8k(root=tmp_path, skip_bad_rows=True)] == ["q0", "q2", "q3"]


def _pretty_processbench(tmp_path, rows, cut: int | None = None):
    (tmp_path / "processbench").mkdir(exist_ok=True)
    text = json.dumps(rows, indent=2)
    (tmp_path / "processbench" / "gsm8k.json").write_text(text[:cut] if cut else text)
    return text


def test_processbench_json_list_names_the_line_each_item_starts_on(tmp_path):
    rows = json.loads((core_rows.DEFAULT_DATA_ROOT / "processbench" / "gsm8k.json").read_text())[:4]
    rows[2].pop("label")
    text = _pretty_processbench(tmp_path, rows)
    line = text[:text.index(json.dumps(rows[2]["id"]))].count("\n")  # the item's "{" is the line before its id
    with pytest.raises(DataError, match=rf"gsm8k.json, line {line} \(item 3\), field 'label': missing"):
        data.load_processbench("gsm8k", root=tmp_path)
    assert len(data.load_processbench("gsm8k", root=tmp_path, skip_bad_rows=True)) == 3


def test_truncated_processbench_names_file_and_line_in_both_loaders(tmp_path):
    from judges.eval import load_processbench as judges_loader
    rows = json.loads((core_rows.DEFAULT_DATA_ROOT / "processbench" / "gsm8k.json").read_text())[:4]
    text = _pretty_processbench(tmp_path, rows, cut=-200)
    last_line = text[:-200].count("\n") + 1
    for load in (lambda: data.load_processbench("gsm8k", root=tmp_path),
                 lambda: judges_loader(tmp_path / "processbench" / "gsm8k.json", limit=2)):
        with pytest.raises(DataError, match=rf"gsm8k.json, line {last_line}: invalid JSON .*item 4"):
            load()
