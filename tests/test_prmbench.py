"""PRMBench read and scored as the official harness (mr_eval prmtest_classified) does, on hand-built
rows with expected values computed by hand from its definitions."""
import json

import pytest

from core.rows import DataError
from prm.data import load_prmbench
from prm.eval import evaluate_prmbench, judge_scorer
from prm.prmbench import harness_f1, prmbench_results, read_prmbench


def row(category, idx, steps, errors, question="modified q", original=("orig q", ["v1", "v2"])):
    return {"classification": category, "idx": idx, "question": "unmodified q", "modified_question": question,
            "modified_process": steps, "error_steps": errors, "original_question": original[0],
            "original_process": original[1], "modified_steps": errors, "reason": "r"}


def write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


# Every category of the release, one or two items each; scores are the PRM's step scores by step text:
# a step named "v..." scores 0.9 (valid), "x..." 0.1 (erroneous).
ROWS_A = [row("redundency", "p1", ["v", "v", "x"], [2, 3]),          # gold valid F F -> pred T T F
          row("circular", "p1", ["v", "x", "x"], [2]),               # gold T F T -> pred T F F
          row("counterfactual", "p2", ["x", "v"], [1])]              # gold F T  -> pred F T
ROWS_B = [row("step_contradiction", "p3", ["v", "v"], [2]),         # gold T F -> pred T T
          row("domain_inconsistency", "p4", ["x", "x"], [1, 2]),     # gold F F -> pred F F
          row("confidence", "p5", ["v", "x", "v", "v"], [2, 9]),     # 9 is past the end: dropped
          row("missing_condition", "p6", ["v", "v"], [1], question="the condition is missing"),
          row("deception", "p7", ["v", "v"], [1]),                   # invalid verdict below: dropped
          row("multi_solutions", "p8", ["v", "x", "v"], []),         # gold T T T -> pred T F T
          row("multi_solutions", "p8", ["v", "v", "v"], [])]         # duplicate (category, idx): dropped


def fake_scores(items, invalid_question=None):
    return [None if t.question == invalid_question else [0.9 if s.startswith("v") else 0.1 for s in t.steps]
            for t in items]


@pytest.fixture
def release(tmp_path):
    folder = tmp_path / "prmbench"
    folder.mkdir()
    write(folder / "a.jsonl", ROWS_A)
    write(folder / "b.jsonl", ROWS_B)
    (folder / "notes.txt").write_text("not data")
    return folder


def test_reads_modified_question_and_builds_correct_items(release):
    items, report = read_prmbench(release)
    assert report.files == [str(release / "a.jsonl"), str(release / "b.jsonl")] and report.rows == 10
    assert all(t.question != "unmodified q" for t in items)
    missing = next(t for t in items if t.meta["classification"] == "missing_condition")
    assert missing.question == "the condition is missing"
    correct = [t for t in items if t.meta["classification"] == "correct"]
    assert len(correct) == 1 and correct[0].question == "orig q" and correct[0].steps == ["v1", "v2"]
    assert correct[0].first_error == -1 and correct[0].meta["error_steps"] == []
    assert len(items) == 10 and report.items == 10       # 9 unique rows + 1 correct item
    assert report.duplicate_rows == [f"{release / 'b.jsonl'}, line 7: duplicate (multi_solutions, p8)"]
    assert report.dropped_error_steps == 1 and report.rows_with_dropped_error_steps == 1
    conf = next(t for t in items if t.meta["classification"] == "confidence")
    assert conf.meta["error_steps"] == [1] and conf.first_error == 1
    assert [t.meta["classification"] for t in load_prmbench(release / "a.jsonl")] == [
        "redundency", "correct", "circular", "counterfactual"]


def test_official_scores_hand_computed(release):
    items, _ = read_prmbench(release)
    res = prmbench_results(items, fake_scores(items, invalid_question=None))
    cats = res["categories"]
    # redundency: gold [T, F, F], pred [T, T, F]: TP 1, FP 1, TN 1, FN 0 -> F1 = 2/3, neg F1 = 2*1*.5/1.5 = 2/3
    assert cats["redundency"]["score"] == pytest.approx(2 / 3)
    # circular: gold [T, F, T], pred [T, F, F]: TP 1 FP 0 TN 1 FN 1 -> F1 2/3, neg: P 1/2 R 1 -> 2/3
    assert cats["circular"]["f1"] == pytest.approx(2 / 3) and cats["circular"]["negative_f1"] == pytest.approx(2 / 3)
    assert cats["counterfactual"]["score"] == 1.0
    # step_contradiction: gold [T, F], pred [T, T]: TP 1 FP 1 -> F1 2/3; TN 0, FN 0: neg precision 0/0 = -1,
    # recall 0/1 = 0 -> neg F1 = 2 * -1 * 0 / (-1) = 0 (the harness's conventions)
    assert cats["step_contradiction"]["negative_f1"] == 0.0
    assert cats["step_contradiction"]["score"] == pytest.approx(1 / 3)
    # domain_inconsistency: all erroneous, all caught: TP = FP = FN = 0 -> F1: p = r = -1 -> 2*1/(-2) = -1
    assert cats["domain_inconsistency"]["f1"] == -1.0 and cats["domain_inconsistency"]["score"] == 0.0
    # missing_condition: gold [F, T], pred [T, T]: TP 1 FP 1 FN 0 TN 0 -> F1 2/3, neg 0
    assert cats["missing_condition"]["score"] == pytest.approx(1 / 3)
    # multi_solutions: gold all valid, pred [T, F, T]: TP 2 FN 1 -> F1 = 4/5, alone (not averaged with a 0)
    assert cats["multi_solutions"]["score"] == pytest.approx(0.8) and cats["multi_solutions"]["items"] == 1
    # correct (original process of the redundency row): all valid, all predicted valid -> F1 1, not in overall
    assert res["correct"]["score"] == 1.0 and res["correct"]["items"] == 1
    # overall pools every non-correct step (sums of the per-category counts below)
    tp, fp, tn, fn = 11, 4, 6, 2
    # per category (tp, fp, tn, fn): red (1,1,1,0) circ (1,0,1,1) cf (1,0,1,0) sc (1,1,0,0) di (0,0,2,0)
    # conf: gold [T, F, T, T] pred [T, F, T, T] (1 dropped error step) (3,0,1,0); mc (1,1,0,0);
    # deception gold [F, T] pred [T, T] (1,1,0,0); ms (2,0,0,1)
    assert (res["overall"]["tp"], res["overall"]["fp"], res["overall"]["tn"], res["overall"]["fn"]) == (tp, fp, tn, fn)
    f1 = 2 * (tp / (tp + fp)) * (tp / (tp + fn)) / (tp / (tp + fp) + tp / (tp + fn))
    neg = 2 * (tn / (tn + fn)) * (tn / (tn + fp)) / (tn / (tn + fn) + tn / (tn + fp))
    assert res["overall"]["score"] == pytest.approx(0.5 * f1 + 0.5 * neg)
    assert res["category_mean"] == pytest.approx(sum(v["score"] for v in cats.values()) / 9)
    assert res["invalid_verdicts"] == 0 and res["validity_rate"] == 1.0


def test_invalid_verdicts_are_dropped_and_counted(release):
    items, _ = read_prmbench(release)
    deception = next(t for t in items if t.meta["classification"] == "deception")
    deception.question = "judge gives up"
    res = prmbench_results(items, fake_scores(items, invalid_question="judge gives up"))
    assert res["invalid_verdicts"] == 1 and res["validity_rate"] == pytest.approx(8 / 9)
    assert res["categories"]["deception"]["items"] == 0 and res["categories"]["deception"]["invalid"] == 1
    assert (res["overall"]["tp"], res["overall"]["fp"]) == (10, 3)     # its two steps are not counted


def test_judge_invalid_verdict_on_prmbench_is_dropped(release):
    class Judge:
        identity = "fixed"

        def judge_batch(self, items):
            from judges.base import Verdict
            return [None if q == "the condition is missing" else Verdict(-1) for q, _ in items]
    res = evaluate_prmbench(judge_scorer(Judge()), path=str(release))
    assert res["invalid_verdicts"] == 1 and res["categories"]["missing_condition"]["invalid"] == 1
    assert res["data"]["duplicate_rows"] == 1 and res["data"]["dropped_error_steps"] == 1


def test_bad_rows_name_file_line_and_field(release):
    bad = [row("deception", "q1", ["v", 5], [1]),                  # a step that is not a string
           row("deception", "q2", ["v"], [1], question=""),         # blank question
           row("deception", "q3", ["v"], ["1"])]                    # error step not a number
    write(release / "c.jsonl", bad)
    with pytest.raises(DataError, match=r"c.jsonl, line 1, field 'modified_process'"):
        read_prmbench(release)
    items, report = read_prmbench(release, skip_bad_rows=True)
    assert len(items) == 10 and report.rows == 13
    c = release / "c.jsonl"
    assert [s.split(": ")[0] for s in report.skipped_rows] == [
        f"{c}, line 1, field 'modified_process'", f"{c}, line 2, field 'modified_question'", f"{c}, line 3, field 'error_steps'"]
    res = evaluate_prmbench(lambda qs, ss: [[0.9] * len(s) for s in ss], path=str(release), skip_bad_rows=True)
    assert res["data"]["skipped_rows"] == 3 and len(res["data"]["skipped"]) == 3


def test_a_blank_step_is_kept_and_scored_as_the_harness_does(release):
    write(release / "c.jsonl", [row("deception", "q1", ["v", "  ", "w"], [3])])
    items, report = read_prmbench(release)
    [item] = [t for t in items if t.meta["file"] == "c.jsonl"]
    assert item.steps == ["v", "  ", "w"] and item.meta["error_steps"] == [2] and report.skipped_rows == []
    res = evaluate_prmbench(lambda qs, ss: [[0.9] * len(s) for s in ss], path=str(release))
    assert res["categories"]["deception"]["steps"] == 3 + sum(
        len(t.steps) for t in items if t.meta["classification"] == "deception" and t.meta["file"] != "c.jsonl")


def test_harness_f1_conventions():
    assert harness_f1(2, 1, 1) == pytest.approx(2 / 3)
    assert harness_f1(0, 0, 3) == 0.0        # precision -1, recall 0: -1 * 0 / -1
    assert harness_f1(0, 2, 3) == -1.0       # precision 0, recall 0
    assert harness_f1(0, 0, 0) == -1.0       # both -1


def test_bundled_subset_loads():
    items, report = read_prmbench(load_prmbench.__globals__["data_root"]() / "prmbench")
    assert report.rows == 394 and report.skipped_rows == [] and report.duplicate_rows == []
    assert len(items) == 394 + 48                            # 48 redundency rows give the correct items
    assert report.rows_with_dropped_error_steps == 11
