"""Claim (e)'s runner (bench/claims/run.py quality_steps, bench/claims/run_e.py): its commands, the ORM's step
score as the score of the step's prefix, the hidden features as the hidden_logprob ones less two columns, raw
rows by hand, and the whole claim end to end on a tiny random-init policy and synthetic judged samples."""
import json
import random
import time

import pytest
import torch
import yaml

from bench.claims import problem_sets, run, run_e
from bench.claims.spec import FENCE, claim_path, load_claim
from tasks.problems import Trajectory

Q = "What is (2 * 7) + 3?"


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """tiny-random-llama as a build's directory (a quality record makes its build step done)."""
    from core.models import load_model
    path = tmp_path_factory.mktemp("build0")
    model, tok = load_model("tiny-random-llama", "fp32")
    model.save_pretrained(path), tok.save_pretrained(path)
    (path / "quality.json").write_text("{}")
    return path


def prm(step_features: str):
    from prm.config import PRMConfig
    from prm.model import EnsemblePRM
    return EnsemblePRM(PRMConfig(backbone="tiny-random-llama", num_heads=4, head_hidden=16, device="cpu",
                                 step_features=step_features))


def test_the_orm_scores_each_step_as_the_prefix_ending_there():
    """A step's score on the whole trajectory = the last step's score on the trajectory cut after it: the
    separator's hidden state and the step's log-prob columns see no later token."""
    orm = prm("hidden_logprob")
    steps = ["2 * 7 = 14", "14 + 3 = 17", "The answer is 17."]
    whole = orm.score([Q], [steps])[0].mean
    prefixes = [orm.score([Q], [steps[:k + 1]])[0].mean[-1] for k in range(len(steps))]
    assert whole == pytest.approx(prefixes, abs=1e-5) and len(set(whole)) == 3


def test_hidden_features_are_the_hidden_logprob_ones_less_their_two_columns(tmp_path):
    items = [Trajectory(Q, ["2 * 7 = 14", "14 + 3 = 17"], -1), Trajectory(Q, ["2 * 7 = 12", "12 + 3 = 15"], 0)]
    args = run_e.parse_args(["--out", str(tmp_path), "--model", "tiny-random-llama"])
    caches = run_e.feature_caches(args, items)
    hidden = prm("hidden")
    for t in items:
        ids, pos = hidden.encode(t.question, t.steps)
        own = hidden.separator_features(hidden.collate([(ids, pos)]))
        assert torch.allclose(caches["hidden"].get(t.question, t.steps), own, atol=1e-5)
        assert caches["hidden_logprob"].get(t.question, t.steps).shape == (2, own.shape[1] + 2)
    assert (tmp_path / "features_hidden_logprob.safetensors").is_file()   # the backbone runs once per build


def test_right_is_no_wrong_step_and_a_verified_answer():
    t = lambda k, passed: Trajectory(Q, ["x"], k, meta={"passed": passed})
    assert [run_e.right(t(-1, True)), run_e.right(t(-1, False)), run_e.right(t(1, True))] == [True, False, False]


def test_problem_rows_by_hand():
    test = [Trajectory("q", ["a", "b", "c"], 1), Trajectory("q", ["a", "b"], -1), Trajectory("r", ["a", "b"], 0)]
    scores = [[0.9, 0.123456789, 0.8], [0.7, 0.6], [0.2, 0.95]]
    rows = run_e.problem_rows(3, "orm", test, scores, tau=0.5)
    # auroc_within: steps before the first error right (1), the first error wrong (0), later ones unlabelled
    # q's labelled steps: right 0.9, 0.7, 0.6 and wrong 0.123457 -> 3 wins of 3 pairs; r: one wrong step, no pair
    assert rows[:2] == [{"seed": 3, "arm": "orm", "problem": "q", "value": {"wins": 3.0, "pairs": 3}},
                        {"seed": 3, "arm": "orm", "problem": "r", "value": {"wins": 0.0, "pairs": 0}}]
    # first_error_f1: [label, first step below tau]
    assert rows[2:] == [{"seed": 3, "arm": "orm", "problem": "q", "metric": "first_error_f1", "value": [[1, 1], [-1, -1]]},
                        {"seed": 3, "arm": "orm", "problem": "r", "metric": "first_error_f1", "value": [[0, 0]]}]
    from bench.claims.metrics import _auroc_within
    assert _auroc_within([rows[0]["value"], rows[1]["value"]]) == pytest.approx(1.0)   # 3 right > the one wrong
    # the counts and the step pairs they summarise give the same metric (a tie counts 1/2)
    steps = [[1, 0.9], [0, 0.6], [1, 0.6], [0, 0.95]]
    assert _auroc_within([steps]) == _auroc_within([{"wins": 1.5, "pairs": 4}]) == pytest.approx(1.5 / 4)


def test_claim_e_commands(tmp_path):
    from bench.bench_chain_pool import parse_args
    claim = load_claim(claim_path("e"))
    steps = run.quality_steps(claim, tmp_path)
    assert [s.name for s in steps] == [f"{kind} {b}" for b in claim.builds for kind in ("samples", "scorers")]
    samples, scorers = parse_args(steps[0].argv[3:]), run_e.parse_args(steps[1].argv[3:])
    assert samples.stage == "pool" and samples.test_n == 8 and samples.n == 4
    assert samples.tune_set.endswith("validation.jsonl") and samples.out == scorers.out == str(tmp_path / "build0")
    assert scorers.labels == 1024 and scorers.seeds == claim.seeds and scorers.arms == list(claim.arms)
    assert set(run_e.ARMS) == set(claim.arms)


def test_dry_run_prints_every_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(problem_sets, "trained_questions", lambda seed, spec=None: frozenset())
    monkeypatch.setenv("PRMLOOP_CACHE", str(tmp_path / "cache"))    # no build is cached: each is printed
    run.main(["e", "--dry-run", "--out", str(tmp_path)])
    printed = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    claim = load_claim(claim_path("e"))
    expected = run.build_steps(claim) + run.quality_steps(claim, tmp_path)
    assert printed == [" ".join(s.argv) for s in expected] and len(printed) == 3 + 2 * 3
    assert not (tmp_path / "build0").exists()


def tiny_claim(tmp_path):
    """Claim (e) as registered, on 2 seeds, 1 build and a few problems per set; raw and plot under tmp_path."""
    text = claim_path("e").read_text()
    spec = yaml.safe_load(FENCE.search(text).group(1))
    sizes = {"test": 3, "validation": 3, "pool": 6}
    spec.update(seeds=[0, 1], builds=[0], raw=str(tmp_path / "raw" / "e.jsonl"), plot=str(tmp_path / "raw" / "e.png"),
                problem_sets=[{**s, "generator_seeds": [s["generator_seeds"][0], s["generator_seeds"][0] + 1],
                               "per_seed": sizes[s["name"]]} for s in spec["problem_sets"]])
    path = tmp_path / "e_tiny.md"
    path.write_text("# tiny\n\n```yaml\n" + yaml.safe_dump(spec, sort_keys=False) + "```\n")
    return path


def judged_samples(out, n: int = 4) -> None:
    """What bench_chain_pool --stage pool leaves (pool, tune, test), from the chain's own solution sampler:
    slips and misconceptions at known steps, some cut before the answer line."""
    from tasks.chain.problems import sample_solution
    rng = random.Random(0)
    for name, source in (("pool", "pool"), ("tune", "validation"), ("test", "test")):
        rows = []
        for p in map(json.loads, (out / "sets" / f"{source}.jsonl").read_text().splitlines()):
            for _ in range(n):
                t = sample_solution(rng, p["question"], 0.5, 99, 0.5)
                steps = t.steps[:-1] if rng.random() < 0.2 else t.steps
                rows.append({"question": t.question, "steps": steps, "first_error": t.first_error,
                             "reference_answer": p["reference_answer"],
                             "meta": {"passed": steps[-1] == f"The answer is {p['reference_answer']}."}})
        (out / "build0" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_claim_e_end_to_end_on_a_tiny_claim(tmp_path, policy_dir, monkeypatch):
    """run.main on a tiny claim (e): sets, the build (done), its samples (synthetic, done), run_e as the
    runner runs it, the raw rows, and every comparison of the claim computed from them."""
    from bench.claims import report
    monkeypatch.setattr(problem_sets, "trained_questions", lambda seed, spec=None: frozenset())
    monkeypatch.setattr(run, "build_dir", lambda seed: policy_dir)
    monkeypatch.setattr(report, "report", lambda name: f"table of ({name})")
    claim_file, out = tiny_claim(tmp_path), tmp_path / "work"
    claim = load_claim(claim_file)
    run.write_sets(claim, out)
    (out / "build0").mkdir()
    judged_samples(out)
    start = time.perf_counter()
    run.main([str(claim_file), "--out", str(out)])
    print(f"claim (e), tiny: {time.perf_counter() - start:.1f} s for {len(claim.seeds)} units")
    rows = report.read_raw(tmp_path / "raw" / "e.jsonl")
    test = [Trajectory(**json.loads(line)) for line in (out / "build0" / "test.jsonl").read_text().splitlines()]
    problems = {t.question for t in test}
    for unit in ("b0/s0", "b0/s1"):
        for arm in claim.arms:
            mine = [r for r in rows if (r["unit"], r["arm"]) == (unit, arm)]
            auroc = {r["problem"]: r["value"] for r in mine if "metric" not in r}
            f1 = {r["problem"]: r["value"] for r in mine if r.get("metric") == "first_error_f1"}
            assert set(auroc) == set(f1) == problems and len(mine) == 2 * len(problems)
            for q in problems:
                own = [t for t in test if t.question == q]
                labels = [y for t in own for y in ([1] * len(t.steps) if t.first_error == -1 else [1] * t.first_error + [0])]
                assert auroc[q]["pairs"] == labels.count(1) * labels.count(0)
                assert 0.0 <= auroc[q]["wins"] <= auroc[q]["pairs"]
                errors = sum(t.first_error != -1 for t in own)
                assert f1[q]["errors"][1] == errors and f1[q]["correct"][1] == len(own) - errors
    by = lambda unit, arm: [r["value"] for r in rows if (r["unit"], r["arm"]) == (unit, arm)]
    assert by("b0/s0", "confidence") == by("b0/s1", "confidence")    # no labels: the same scores every seed
    assert by("b0/s0", "prm") != by("b0/s1", "prm")                  # another draw, another init
    summary = [json.loads(line) for line in (out / "build0" / "e_summary.jsonl").read_text().splitlines()]
    assert {s["labels"] for s in summary if s["arm"] != "confidence"} == {6 * 4}   # the whole tiny pool: < 1,024
    units = [json.loads(line) for line in (tmp_path / "raw" / "e.units.jsonl").read_text().splitlines()]
    assert sorted((u["unit"], u["arm"]) for u in units) == sorted((f"b0/s{s}", a) for s in (0, 1) for a in claim.arms)
    assert all("auroc" in u and "auroc_product78" in u and "seconds" not in u for u in units)
    for c in claim.comparisons:
        result = report.compare(claim, c, rows)
        assert result is not None and result.units == 2 and result.problems == len(problems)
