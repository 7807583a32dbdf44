"""bench/claims: claim files load, bad ones fail naming file, line and field; test sets are fresh."""
from pathlib import Path

import pytest

from bench.claims import problem_sets
from bench.claims.problem_sets import (
    OverlapError,
    assert_disjoint,
    claim_problem_sets,
    problem_set,
)
from bench.claims.spec import (
    ClaimError,
    ProblemSet,
    Role,
    claim_files,
    claim_path,
    load_claim,
)

GOOD = """# A claim

Some prose.

```yaml
id: z
title: "t"
hypothesis: "h"
metric: mean
arms:
  a: "arm a"
  b: "arm b"
comparisons:
  - name: a_vs_b
    treatment: a
    control: b
seeds: [0, 1]
builds: [0]
problem_sets:
  - name: test
    role: test
    generator_seeds: [950000, 950002]
    per_seed: 10
  - name: validation
    role: validation
    generator_seeds: [850000, 850001]
    per_seed: 10
run: "python -m bench.claims.run z"
raw: bench/claims/raw/z.jsonl
plot: bench/claims/raw/z.png
```
"""


def write(tmp_path, text) -> Path:
    path = tmp_path / "z.md"
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_the_pre_registered_claims_load():
    ids = {load_claim(p).id for p in claim_files()}
    assert {"a", "b", "d", "e"} <= ids
    d = load_claim(claim_path("d"))
    assert len(d.builds) >= 3 and d.metric == "mean" and claim_path("d_search") == d.path


def test_a_good_file_loads(tmp_path):
    c = load_claim(write(tmp_path, GOOD))
    assert c.test_set == ProblemSet("test", Role.test, (950000, 950002), 10)
    assert [x.name for x in c.comparisons] == ["a_vs_b"] and c.alpha == 0.05


@pytest.mark.parametrize("old, new, field, needle", [
    ("    control: b\n", "    control: c\n", "comparisons.0.control", "control: c"),
    ("metric: mean", "metric: median", "metric", "metric: median"),
    ("seeds: [0, 1]", "seeds: [0]", "seeds", "seeds: [0]"),
    ("    generator_seeds: [850000, 850001]", "    generator_seeds: [950001, 950003]",
     "problem_sets.1.generator_seeds", "[950001, 950003]"),
    ("    role: validation", "    role: holdout", "problem_sets.1.role", "role: holdout"),
    ('hypothesis: "h"\n', "", "hypothesis", "id: z"),
])
def test_a_bad_field_fails_naming_file_line_and_field(tmp_path, old, new, field, needle):
    text = GOOD.replace(old, new)
    assert text != GOOD
    path = write(tmp_path, text)
    with pytest.raises(ClaimError) as e:
        load_claim(path)
    message = str(e.value)
    if field == "hypothesis":    # missing: the block's first line
        assert message.startswith(f"{path}:") and "hypothesis: missing" in message
    else:
        assert message.startswith(f"{path}:{line_of(text, needle)}: {field}:"), message


def test_a_file_without_a_yaml_block_fails(tmp_path):
    with pytest.raises(ClaimError, match="no ```yaml block"):
        load_claim(write(tmp_path, "# just prose\n"))


def test_assert_disjoint_names_the_overlapping_question():
    test = problem_set(ProblemSet("t", Role.test, (950000, 950001), 5))
    other = problem_set(ProblemSet("v", Role.validation, (850000, 850001), 5))
    assert_disjoint(test, {"validation": other})
    planted = other + [test[3]]
    with pytest.raises(OverlapError) as e:
        assert_disjoint(test, {"validation": planted})
    assert test[3].question in str(e.value) and "validation" in str(e.value)


def test_a_test_set_on_a_reserved_seed_range_fails(tmp_path):
    path = write(tmp_path, GOOD.replace("[950000, 950002]", "[200, 204]"))
    with pytest.raises(OverlapError, match=r"\[202, 203\)"):
        claim_problem_sets(load_claim(path), check_builds=False)


def test_test_questions_seen_elsewhere_are_dropped_then_checked(tmp_path, monkeypatch):
    claim = load_claim(write(tmp_path, GOOD))
    monkeypatch.setattr(problem_sets, "trained_questions", lambda seed, spec=None: frozenset())
    before = claim_problem_sets(claim)["test"]   # short chains also recur in the reserved sets
    trained = frozenset({before.problems[0].question, before.problems[5].question})
    monkeypatch.setattr(problem_sets, "trained_questions", lambda seed, spec=None: trained)
    test = claim_problem_sets(claim)["test"]
    assert test.dropped == before.dropped + 2 and len(test.problems) == len(before.problems) - 2
    assert not {p.question for p in test.problems} & trained
    # the guard runs on the result: a filter that let one through would fail there
    monkeypatch.setattr(problem_sets, "assert_disjoint", lambda *a: (_ for _ in ()).throw(OverlapError("guard")))
    with pytest.raises(OverlapError, match="guard"):
        claim_problem_sets(claim)


def test_the_search_claims_test_set_is_fresh_and_large_enough():
    """The real check: claim (d)'s test set against its three builds' SFT questions and every reserved set."""
    sets = claim_problem_sets(load_claim(claim_path("d")))
    assert len(sets["test"].problems) >= 500
    seen_in_sft = problem_sets.trained_questions(0)
    assert not {p.question for p in sets["test"].problems} & seen_in_sft
