"""Step splitting, label conventions, answer extraction and checking."""
import time

import pytest

from core.answers import AnswerChecker, extract_answer, last_boxed
from core.steps import clean_step, first_below, first_error_from_labels, join_steps, labels_from_first_error, split_steps, truncate_after_error


def test_split_on_blank_lines_and_collapse():
    text = "  Step one.\n\n\n Step two\nstill two.\n \t\nStep three.\n\n"
    assert split_steps(text) == ["Step one.", "Step two\nstill two.", "Step three."]
    assert split_steps(join_steps(["a", "b c", "d"])) == ["a", "b c", "d"]
    assert clean_step("x\n\ny") == "x y"


def test_split_fallbacks():
    assert split_steps("2+3=5\nSo the answer is 5.") == ["2+3=5", "So the answer is 5."]
    assert split_steps("First, 2+3=5. Then 5*2=10. The answer is 10.") == ["First, 2+3=5.", "Then 5*2=10.", "The answer is 10."]
    assert split_steps("2+3=5\nx", fallback=False) == ["2+3=5\nx"]
    assert split_steps("   ") == []


@pytest.mark.parametrize("k,n", [(-1, 4), (0, 4), (2, 4), (3, 4), (-1, 1), (0, 1)])
def test_label_roundtrip(k, n):
    labels = labels_from_first_error(k, n)
    assert first_error_from_labels(labels) == k
    assert len(labels) == (n if k == -1 else k + 1)
    assert len(truncate_after_error(list("abcd")[:n], k)) == len(labels)


def test_label_errors():
    with pytest.raises(ValueError):
        labels_from_first_error(4, 4)
    with pytest.raises(ValueError):
        first_error_from_labels([1, 2])
    assert labels_from_first_error(2, 5) == [1, 1, 0]
    assert first_below([0.9, 0.7, 0.2, 0.1], 0.5) == 2 and first_below([0.9, 0.6], 0.5) == -1


def test_extract_answer():
    assert extract_answer("We add.\n\nThe answer is 18.") == "18"
    assert extract_answer("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_answer("Janet has 9.\n#### 1,000") == "1,000"
    assert extract_answer("The final answer is $\\boxed{5}$.") == "5"
    assert last_boxed("\\boxed{\\{1,2\\}} and \\boxed{x^{2}}") == "x^{2}"
    # The last number is only a fallback when asked: models repeat numbers from the question.
    assert extract_answer("3 + 4 is what we need") is None
    assert extract_answer("3 + 4 is what we need", fallback_last_number=True) == "4"
    assert extract_answer("so \\framebox{42} done") == "42"
    assert extract_answer("The answer is $\\boxed{\\textbf{(073)}}$") == "073"
    assert extract_answer("\\boxed{\\textbf{(C)}\\ 12}") == "\\textbf{(C)}\\ 12"  # not a whole wrapper
    assert last_boxed("\\boxed{(1,2)}") == "(1,2)"  # a tuple keeps its parentheses
    assert extract_answer("The answer is " + "x" * 300) == "x" * 200
    assert extract_answer("The answer is " + "x" * 300, max_chars=None) == "x" * 300


@pytest.fixture(scope="module")
def checker():
    c = AnswerChecker(timeout_s=5.0)
    yield c
    c.close()


def test_answer_checking(checker):
    golds = ["\\frac{1}{2}", "72", "1000", "3", "18", "18", "\\frac{3}{4}", "\\sqrt{2}"]
    preds = ["0.5", "72.0", "1,000", "x=3", "17", None, "3/4", "\\sqrt{2}"]
    assert checker.check_many(golds, preds) == [True, True, True, True, False, False, True, True]
    texts = ["Add them.\n\nThe answer is 18.", "Blah 18 blah.", "#### 18"]
    assert checker.score_solutions(["18"] * 3, texts) == [True, False, True]


TOWER = "9^{9^{9^{9^{9^{9}}}}}"


def test_pathological_answer_is_unverified_and_does_not_cascade():
    """One answer that hangs math-verify costs its own deadline only: the answers queued behind it
    (one worker) still get theirs, and the hung one is "unverified" and counted, not "wrong"."""
    checker = AnswerChecker(timeout_s=2.0, workers=1)
    try:
        golds = ["1", "\\frac{2}{4}", "\\frac{1}{2}", "\\frac{3}{4}", "\\sqrt{3}"]
        preds = [TOWER, "\\frac{1}{2}", "0.5", "3/4", "\\sqrt{2}"]
        start = time.monotonic()
        assert checker.verify_many(golds, preds) == ["unverified", "correct", "correct", "correct", "wrong"]
        assert time.monotonic() - start < 30
        assert checker.counts["unverified"] == 1 and checker.counts["correct"] == 3
        assert checker.check_many(golds[1:3], preds[1:3]) == [True, True]  # recovered after the timeout
    finally:
        checker.close()


def test_long_and_identical_answers_verify(checker):
    long_gold = "+".join(f"x_{{{i}}}" for i in range(80))  # ~560 characters, over the 200-character cut
    assert checker.check(long_gold, long_gold) is True  # identical strings verify, however long
    assert checker.check(long_gold, long_gold.replace("+", " + ")) is True  # spacing differs: math-verify sees it whole
    assert checker.check(long_gold, long_gold[:-6] + "x_{0}") is False
    assert checker.check("073", "73") is True


def test_checker_without_main_guard(tmp_path):
    """A script that checks answers at top level (no __main__ guard) runs: the workers never re-import it."""
    import subprocess
    import sys
    from pathlib import Path
    script = tmp_path / "top_level.py"
    script.write_text("from core.answers import AnswerChecker\n"
                      "print(AnswerChecker().check_many(['\\\\frac{1}{2}'], ['0.5']))\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[True]"


def test_checker_is_thread_safe(checker):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda i: checker.check(f"\\frac{{{i}}}{{2}}", str(i / 2)), range(8)))
    assert out == [True] * 8
