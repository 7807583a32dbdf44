"""bench/claims/run.py: the commands a claim runs compose and fit their schemas; its sets are readable by
task=chain task.source=...; the runs' records become the claim's raw rows."""
import json
import subprocess

import pytest

from bench.claims import problem_sets, run, run_b
from bench.claims.spec import claim_path, load_claim
from judges.base import Cost, Judge, Verdict
from judges.ledger import LabelLedger
from rl.config import TaskConfig
from tasks.registry import make_task
from tests.test_commands import compose_and_validate


@pytest.fixture
def claim_d():
    return load_claim(claim_path("d"))


def test_every_command_of_claim_d_composes(claim_d, tmp_path):
    steps = run.build_steps(claim_d) + run.search_steps(claim_d, tmp_path)
    modules = [s.argv[2] for s in steps]
    assert modules.count("tasks.chain.policy") == len(claim_d.builds) == 3
    assert modules.count("rl.search") == 3 * len(claim_d.builds) and modules.count("prm.train") == len(claim_d.builds)
    for step in steps:
        if step.argv[2] in ("rl.search", "prm.train"):
            compose_and_validate(step.argv[2], step.argv[3:])
    seeds = [w for s in steps for w in s.argv if w.startswith("seeds=")]
    assert set(seeds) == {"seeds=[0,1,2]"}
    # a set read from a file is read whole: rl.search's default task.limit (20 problems) must not cut it
    reading = [s.argv for s in steps if any(w.startswith("task.source=") for w in s.argv)]
    assert len(reading) == 3 * len(claim_d.builds) and all("task.limit=null" in argv for argv in reading)


def test_sets_are_written_for_task_source(claim_d, tmp_path, monkeypatch):
    monkeypatch.setattr(problem_sets, "trained_questions", lambda seed, spec=None: frozenset())
    small = claim_d
    small.problem_sets = [s.__class__(s.name, s.role, (s.generator_seeds[0], s.generator_seeds[0] + 1), 5)
                          for s in claim_d.problem_sets]
    summary = run.write_sets(small, tmp_path)
    test = make_task(TaskConfig(name="chain", source=str(tmp_path / "sets" / "test.jsonl"))).problems
    assert len(test) == summary["test"]["problems"] > 0
    drawn = problem_sets.claim_problem_sets(small, check_builds=False)["test"].problems
    assert [(p.question, p.reference_answer) for p in test] == [(p.question, p.reference_answer) for p in drawn]


def test_records_become_raw_rows(claim_d, tmp_path):
    def record(seed, question, results):
        return json.dumps({"seed": seed, "question": question, "results": results}) + "\n"
    prm = tmp_path / "build0" / "chain_prm_min" / "records"
    conf = tmp_path / "build0" / "chain_confidence" / "records"
    prm.mkdir(parents=True), conf.mkdir(parents=True)
    (prm / "greedy.jsonl").write_text(record(1, "q1", [{"label": "greedy", "n": 1, "correct": True}]))
    (prm / "best_of_n.jsonl").write_text(record(1, "q1", [{"label": "best_of_n/vanilla", "n": 16, "correct": False},
                                                           {"label": "best_of_n/vanilla", "n": 8, "correct": True}]))
    cost = {"generated_tokens": 40, "policy_forward_tokens": 900, "scorer_forward_tokens": 300}
    (conf / "beam.jsonl").write_text(record(2, "q2", [{"label": "beam/vanilla", "n": 16, "correct": True, "cost": cost}]))
    rows = run.search_raw(claim_d, tmp_path)
    assert sorted((r["unit"], r["arm"], r["problem"], r["value"]) for r in rows) == [
        ("b0/s1", "bon_prm_vanilla16", "q1", 0), ("b0/s1", "greedy", "q1", 1), ("b0/s2", "beam_conf16", "q2", 1)]
    # the compute where the record counts it (records written before it was counted have none)
    assert {r["arm"]: r.get("compute") for r in rows} == {
        "bon_prm_vanilla16": None, "greedy": None,
        "beam_conf16": {"policy_forward_tokens": 900, "scorer_forward_tokens": 300}}


def test_every_arm_of_claim_d_has_records_to_come_from(claim_d):
    assert set(claim_d.arms) == set(run.SEARCH_ARMS)


def test_every_pre_registered_claim_has_a_runner():
    from bench.claims.spec import claim_files
    assert {load_claim(p).id for p in claim_files()} <= set(run.RUNNERS)


def test_every_command_of_claim_b_composes(tmp_path):
    claim = load_claim(claim_path("b"))
    steps = run_b.online_steps(claim, tmp_path)
    assert len(steps) == len(claim.builds) * len(claim.seeds) * len(claim.arms) == 60
    for step in steps[:len(claim.arms)] + steps[-1:]:      # every arm, and the last build / seed
        assert step.argv[2] == "rl.online"
        words = step.argv[3:]
        words = [f"--config-name={words[1]}", *words[2:]]
        compose_and_validate("rl.online", words)
    seeds = sorted({w for s in steps for w in s.argv if w.startswith("task.seed=")})
    assert seeds == [f"task.seed={600200 + i}" for i in range(5)]     # the claim's train set, one seed each


def test_online_records_become_raw_rows_from_the_last_round(tmp_path):
    claim = load_claim(claim_path("b"))
    here = run_b.online_dir(tmp_path, 0, 3, "eq5")
    here.mkdir(parents=True)
    rows = [{"round": 0, "question": "q1", "right": 0, "n": 4}, {"round": 40, "question": "q1", "right": 3, "n": 4},
            {"round": 40, "question": "q2", "right": 4, "n": 4}]
    (here / "eval_problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_b.online_raw(claim, tmp_path) == []                      # not finished (or killed): no rows
    (here / "claim_step.done").touch()
    assert sorted((r["unit"], r["arm"], r["problem"], r["value"]) for r in run_b.online_raw(claim, tmp_path)) == [
        ("b0/s3", "eq5", "q1", 0.75), ("b0/s3", "eq5", "q2", 1.0)]


class OneWrongStep(Judge):
    identity = "one-wrong-step:v1"

    def judge(self, question, steps):
        return Verdict(0, cost=Cost(calls=1))


def test_online_units_read_paid_labels_from_the_runs_ledger(tmp_path):
    """A run killed after paying for round 2's labels and resumed logs round 2 twice; its metrics then sum to
    more calls than were paid (5 + 2 of the same labels). The ledger holds what was paid: 7 + 5 + 4 labels."""
    claim = load_claim(claim_path("b"))
    here = run_b.online_dir(tmp_path, 1, 2, "random")
    here.mkdir(parents=True)
    metrics = [{"round": 0, "eval/pass": 0.5},
               {"round": 1, "judge/calls": 7, "judge/ledger_hits": 1},
               {"round": 2, "judge/calls": 5, "judge/ledger_hits": 0},       # killed before its checkpoint:
               {"round": 2, "judge/calls": 0, "judge/ledger_hits": 5},       # run again, the ledger answers
               {"round": 3, "judge/calls": 4, "judge/ledger_hits": 0, "eval/pass": 0.625}]
    (here / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    with LabelLedger(here / "ledger.sqlite") as ledger:
        ledger.label(OneWrongStep(), [(f"q{i}", ["a", "b"]) for i in range(16)])
        ledger.label(OneWrongStep(), [(f"q{i}", ["a", "b"]) for i in range(7, 12)])   # the resumed round's hits
    assert run_b.online_units(claim, tmp_path) == []
    (here / "claim_step.done").touch()
    assert run_b.online_units(claim, tmp_path) == [
        {"unit": "b1/s2", "arm": "random", "judge_paid": 16, "ledger_hits": 6, "held_out_pass": 0.625}]


def test_a_step_that_marks_is_done_only_after_it_succeeds(tmp_path):
    ok = run.Step("ok", ["python", "-c", "pass"], tmp_path / "ok.done", mark=True)
    run.run_step(ok, dry_run=False)
    assert ok.done.is_file()
    bad = run.Step("bad", ["python", "-c", "raise SystemExit(3)"], tmp_path / "bad.done", mark=True)
    with pytest.raises(subprocess.CalledProcessError):
        run.run_step(bad, dry_run=False)
    assert not bad.done.exists()


def test_claim_a_runs_bench_chain_pool_on_its_own_sets(tmp_path):
    from bench.bench_chain_pool import parse_args
    claim = load_claim(claim_path("a"))
    steps = run.label_steps(claim, tmp_path)
    assert len(steps) == 2 * 3                        # samples + runs, for each of the 3 pools
    for step in steps:
        assert step.argv[1:3] == ["-m", "bench.bench_chain_pool"]
        args = parse_args(step.argv[3:])              # every flag exists
        assert args.model.endswith("chain-tiny") and args.out.startswith(str(tmp_path))
    runs = parse_args(steps[1].argv[3:])
    assert runs.per_problem and runs.seeds == claim.seeds and runs.budgets == [0.05, 0.1, 0.2, 0.3, 0.5]
    samples = parse_args(steps[0].argv[3:])
    assert samples.pool_set.endswith("pool_0.jsonl") and samples.tune_set.endswith("validation.jsonl")


def test_label_units_name_the_budget_that_reaches_full_data_f1(tmp_path):
    """Per unit: F1 and AUROC at each budget, and the smallest budget within 0.02 F1 of the same PRM on every
    label (1.0 when no budget is)."""
    claim = load_claim(claim_path("a"))
    (tmp_path / "pool_0").mkdir()
    f1 = {"active": {0.1: 0.5, 0.3: 0.69}, "random": {0.1: 0.5, 0.3: 0.6}}
    runs = [{"mode": m, "budget": b, "seed": 2, "f1": v, "auroc": 0.9} for m in f1 for b, v in f1[m].items()]
    runs.append({"mode": "full", "budget": 1.0, "seed": 2, "f1": 0.7, "auroc": 0.95})
    (tmp_path / "pool_0" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    units = {u["arm"]: u for u in run.label_units(claim, tmp_path)}
    assert units["active"]["reaches_full_f1_at"] == 0.3 and units["random"]["reaches_full_f1_at"] == 1.0
    assert units["active"]["unit"] == "pool_0/s2" and units["active"]["f1@0.1"] == 0.5 and units["random"]["full_f1"] == 0.7


def test_label_runs_become_curves_and_f1_rows(tmp_path):
    claim = load_claim(claim_path("a"))
    (tmp_path / "pool_1").mkdir()
    runs = [{"mode": "active", "budget": b, "seed": 4, "per_problem": {"q": [[1, 1]], "r": [[-1, 0]]}} for b in (0.1, 0.3)]
    runs += [{"mode": "full", "budget": 1.0, "seed": 4, "per_problem": {"q": [[1, 1]], "r": [[-1, -1]]}}]
    (tmp_path / "pool_1" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    rows = {(r["arm"], r["problem"]): r for r in run.label_raw(claim, tmp_path)}
    named = {"errors": [1, 1], "correct": [0, 0]}      # q: its one error named
    assert rows[("active", "q")]["value"] == {"0.1": named, "0.3": named} and rows[("active", "q")]["unit"] == "pool_1/s4"
    assert rows[("full", "r")] == {"unit": "pool_1/s4", "arm": "full", "problem": "r", "metric": "first_error_f1",
                                   "value": {"errors": [0, 0], "correct": [1, 1]}}
    assert rows[("active_at_30", "r")]["value"] == {"errors": [0, 0], "correct": [0, 1]} and ("random", "q") not in rows


def test_sets_drawn_from_other_problem_sets_are_refused(claim_d, tmp_path):
    """An edited claim file must not run on the sets its earlier version drew: runs may have read them."""
    drawn = {s.name: {"role": s.role.value, "generator_seeds": list(s.generator_seeds), "per_seed": s.per_seed,
                      "problems": 3, "dropped": 0} for s in claim_d.problem_sets}
    (tmp_path / "sets.json").write_text(json.dumps(drawn))
    assert run.drawn_sets(claim_d, tmp_path, draw=None) == drawn          # the same sets: reused, nothing drawn
    older = {k: {f: v for f, v in d.items() if f != "per_seed"} for k, d in drawn.items()}
    (tmp_path / "sets.json").write_text(json.dumps(older))                 # written before per_seed was recorded
    assert run.drawn_sets(claim_d, tmp_path, draw=None) == older
    test = claim_d.problem_sets[0]
    edited = {**drawn, test.name: {**drawn[test.name], "per_seed": test.per_seed * 2}}
    (tmp_path / "sets.json").write_text(json.dumps(edited))
    with pytest.raises(SystemExit, match=rf"set '{test.name}' was drawn as .*'per_seed': {test.per_seed * 2}"):
        run.drawn_sets(claim_d, tmp_path, draw=None)
    del edited[test.name]
    (tmp_path / "sets.json").write_text(json.dumps(edited))
    with pytest.raises(SystemExit, match="was drawn as nothing"):
        run.drawn_sets(claim_d, tmp_path, draw=None)


def test_each_launch_records_the_code_it_ran_on(tmp_path, monkeypatch):
    from bench.claims import steps
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True).stdout  # noqa: E731
    git("init", "-q")
    (repo / "f.py").write_text("x = 1\n")
    git("add", "f.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    commit = git("rev-parse", "HEAD").strip()
    assert steps.code_version(repo) == commit
    (repo / "untracked.txt").write_text("")                  # not code that runs: still the commit
    assert steps.code_version(repo) == commit
    (repo / "f.py").write_text("x = 2\n")
    assert steps.code_version(repo) == commit + "+modified"
    assert steps.code_version(tmp_path / "nowhere") == "unknown"

    versions = iter(["aaa", "aaa", "bbb"])
    monkeypatch.setattr(steps, "code_version", lambda root=None: next(versions))
    provenance = tmp_path / "code.jsonl"
    one = run.Step("one", ["python", "-c", "pass"], tmp_path / "one.done", mark=True)
    run.run_step(one, dry_run=True, provenance=provenance)      # printed only: nothing ran, nothing recorded
    assert not provenance.exists()
    run.run_step(one, dry_run=False, provenance=provenance)
    run.run_step(one, dry_run=False, provenance=provenance)     # done: skipped, not recorded
    one.done.unlink()                                           # as if killed: launched again, on the same code
    run.run_step(one, dry_run=False, provenance=provenance)
    build = tmp_path / "chain-tiny-seed1"                       # a step on a policy build: its weights too
    build.mkdir()
    (build / "quality.json").write_text(json.dumps({"weights_sha256": "0123456789abcdef" * 4}))
    two = run.Step("two", ["python", "-c", "pass"], tmp_path / "two.done", mark=True, policy=build)
    run.run_steps([two], dry_run=False, jobs=2, provenance=provenance)
    assert steps.code_used(provenance) == {"aaa": ["one"], "bbb weights 0123456789ab": ["two"]}
    (build / "quality.json").write_text("{}")                   # a test's tiny build records no digest
    assert steps.weights_version(build) is None and steps.weights_version(None) is None


def test_a_claim_that_waits_is_not_run_but_shows_what_it_waits_for(tmp_path, monkeypatch):
    """claim (b) waits for claim (c)'s stage 2: the runner refuses it (a dry run and --collect still work) and
    the claims table says what it waits for."""
    from bench.claims.report import claims_table
    claim = load_claim(claim_path("b"))
    wait = "the learned PRM to beat outcome only in claim (c)'s stage 2 (c_lucky_dense, or its chain_sparse twin)"
    assert claim.waits_for == wait
    monkeypatch.setattr(run, "drawn_sets", lambda claim, out, draw: {})
    monkeypatch.setattr(run, "run_steps", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran a step")))
    with pytest.raises(SystemExit, match=r"claim \(b\) waits for the learned PRM to beat outcome only"):
        run.main(["b_online_labels", "--out", str(tmp_path)])
    row = next(line for line in claims_table().splitlines() if line.startswith("| (b)"))
    assert f"| pre-registered, waits for {wait} |" in row


def test_status_counts_done_steps_and_the_hours_left(tmp_path):
    import os
    from datetime import datetime, timezone
    from bench.claims.steps import progress
    steps = [run.Step(f"s{i}", ["python", "-c", "pass"], tmp_path / f"s{i}.done", mark=True) for i in range(5)]
    assert progress(steps, tmp_path / "code.jsonl") == "0 of 5 steps done"
    start = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    rows = []
    for i, minutes in [(0, 30), (1, 90)]:                      # launched at `start`, done 30 and 90 min later
        steps[i].done.touch()
        os.utime(steps[i].done, (start + 60 * minutes, start + 60 * minutes))
        rows.append({"step": f"s{i}", "code": "abc", "at": datetime.fromtimestamp(start, timezone.utc).isoformat()})
    steps[2].done.touch()                                         # done before launches were recorded: not timed
    (tmp_path / "code.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert progress(steps, tmp_path / "code.jsonl") == (
        "3 of 5 steps done; 60 min a step (mean of 2 timed), about 2.0 h of steps left, one at a time")
