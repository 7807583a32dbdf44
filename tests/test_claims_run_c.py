"""bench/claims/run_c.py: claim (c) on its testbed task: sets drawn with the task's chain settings and checked
against its policy's SFT questions, one rl.online run per (seed, arm) on the claim's test set, raw rows from
the runs' eval_problems.jsonl."""
import json
import shlex
from dataclasses import dataclass

import pytest

from bench.bench_chain_online import ARMS
from bench.claims import problem_sets, report, run, run_c
from bench.claims.spec import claim_path, load_claim
from tasks.chain.policy import LuckyChainModelSpec, SparseChainModelSpec
from tasks.chain.problems import parse_question
from tests.test_commands import compose_and_validate

TASKS = {"c_sparse": ("chain_sparse", SparseChainModelSpec, 12, 20, set("+-*")),
         "c_lucky": ("chain_lucky", LuckyChainModelSpec, 4, 8, set("+-"))}


def small(claim, per_seed=8):
    """The claim with one generator seed of `per_seed` problems per set (drawing the full sets is the slow part)."""
    claim.problem_sets = [s.__class__(s.name, s.role, (s.generator_seeds[0], s.generator_seeds[0] + 1), per_seed)
                          for s in claim.problem_sets]
    return claim


@pytest.mark.parametrize("name", list(TASKS))
def test_sets_are_drawn_with_the_tasks_spec_and_leave_out_its_policys_sft_questions(name, tmp_path, monkeypatch):
    _, spec_class, low, high, ops = TASKS[name]
    claim = small(load_claim(claim_path(name)))
    planted = problem_sets.problem_set(claim.test_set, run_c.task_spec(claim))[2:4]   # "trained on" by the build
    asked = []

    def trained(seed, spec=None):
        asked.append((seed, spec))
        return frozenset(p.question for p in planted)
    monkeypatch.setattr(problem_sets, "trained_questions", trained)
    summary = run.write_sets(claim, tmp_path, run_c.draw_sets)
    assert asked == [(0, spec_class)]
    test = [json.loads(line)["question"] for line in (tmp_path / "sets" / "test.jsonl").read_text().splitlines()]
    assert summary["test"]["dropped"] >= 2 and len(test) == summary["test"]["problems"] > 0
    assert not set(test) & {p.question for p in planted}
    for q in test:
        steps = parse_question(q)[1]
        assert low <= len(steps) <= high and {op for op, _ in steps} <= ops, q


def test_the_policys_sft_questions_come_from_its_own_spec():
    @dataclass
    class TinyLucky(LuckyChainModelSpec):      # a tiny build: two SFT steps per phase
        train_steps: int = 2
        misconception_steps: int = 2
    seen = problem_sets.trained_questions(0, TinyLucky)
    assert len(seen) > 1000
    assert all({op for op, _ in parse_question(q)[1]} <= set("+-") and 4 <= len(parse_question(q)[1]) <= 8
               for q in seen)


def dry_run(name, tmp_path, monkeypatch, capsys) -> list[list[str]]:
    """The rl.online commands `python -m bench.claims.run <name> --dry-run` prints (sets stubbed out)."""
    monkeypatch.setattr(run, "drawn_sets", lambda claim, out, draw: {"test": {"problems": 1, "dropped": 0}})
    run.main([name, "--dry-run", "--out", str(tmp_path)])
    lines = [line[2:].split("  >> ")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert lines[0] == f"python -m core.models {TASKS[name][0].replace('chain_', 'chain-tiny-')}"
    return [shlex.split(line) for line in lines[1:]]


@pytest.mark.parametrize("name", list(TASKS))
def test_the_dry_run_lists_every_arm_and_seed_with_its_overrides(name, tmp_path, monkeypatch, capsys):
    claim = load_claim(claim_path(name))
    task, model = run_c.TESTBED[name]
    commands = dry_run(name, tmp_path, monkeypatch, capsys)
    assert len(commands) == 4 * 15 and all(argv[:3] == ["python", "-m", "rl.online"] for argv in commands)
    first = next(s for s in claim.problem_sets if s.role == "train").generator_seeds[0]
    runs = set()
    for argv in commands:
        words = set(argv[3:])
        seed = int(next(w for w in words if w.startswith("trainer.seed="))[len("trainer.seed="):])
        arm = next(w for w in words if w.startswith("trainer.out_dir=")).rsplit("/", 1)[1]
        runs.add((seed, arm))
        assert set(ARMS[arm]) <= words and f"task.seed={first + seed}" in words
        assert {f"task={task}", f"policy.model={model}", f"prm.backbone={model}", "rounds=40",
                f"policy_eval.source={tmp_path / 'sets' / 'test.jsonl'}", "trainer.resume=auto"} <= words
        # sparse's metric averages rounds 20 and 40 and its solutions are long; lucky's reads round 40 alone
        assert set(run_c.EXTRAS[name]) <= words
        assert ("policy_eval.every=20" in words) == (name == "c_sparse")
        assert ("policy_eval.every=40" in words) == (name == "c_lucky")
    assert runs == {(s, a) for s in range(15) for a in claim.arms}


@pytest.mark.parametrize("name", list(TASKS))
def test_the_commands_compose(name, tmp_path, monkeypatch, capsys):
    commands = dry_run(name, tmp_path, monkeypatch, capsys)
    for argv in commands[:4]:                         # one per arm
        compose_and_validate("rl.online", [f"--config-name={argv[4]}", *argv[5:]])


def write_evals(out, seed, arm, rows):
    here = run_c.run_dir(out, 0, seed, arm)
    here.mkdir(parents=True)
    (here / "eval_problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def row(rnd, q, right, wrong=0):
    return {"round": rnd, "question": q, "right": right, "n": 4, "greedy_right": 0, "passed_wrong_step": wrong}


def test_sparse_rows_average_the_evaluations_after_round_0(tmp_path):
    claim = load_claim(claim_path("c_sparse"))
    # q1: 1/4 at round 5 (written twice: the later counts), 3/4 at 40; round 0 left out
    write_evals(tmp_path, 2, "outcome_c", [row(0, "q1", 4), row(0, "q2", 4), row(5, "q1", 0), row(5, "q2", 4),
                                           row(5, "q1", 1), row(40, "q1", 3), row(40, "q2", 2)])
    write_evals(tmp_path, 3, "outcome_c", [row(0, "q1", 1), row(5, "q1", 2)])      # stopped before round 40
    assert sorted((r["unit"], r["arm"], r["problem"], r["value"]) for r in run_c.testbed_raw(claim, tmp_path)) == [
        ("b0/s2", "outcome_c", "q1", 0.5), ("b0/s2", "outcome_c", "q2", 0.75)]


def test_lucky_rows_are_the_last_rounds_correct_steps_share_and_pass(tmp_path):
    claim = load_claim(claim_path("c_lucky"))
    write_evals(tmp_path, 0, "judge_sum_c", [row(35, "q1", 4, 0), row(40, "q1", 3, 1), row(40, "q2", 0),
                                             row(40, "q3", 4, 0)])
    rows = {(r.get("metric", "mean"), r["problem"]): r["value"] for r in run_c.testbed_raw(claim, tmp_path)}
    # q2: no passed sample, so no share; its pass (0) is still a row
    assert rows == {("mean", "q1"): pytest.approx(2 / 3), ("mean", "q3"): 1.0, ("held_out_pass", "q1"): 0.75,
                    ("held_out_pass", "q2"): 0.0, ("held_out_pass", "q3"): 1.0}


def test_the_no_loss_comparison_reads_held_out_pass(tmp_path):
    claim = load_claim(claim_path("c_lucky"))
    for seed, arm, right in ((0, "outcome_c", 2), (0, "judge_sum_c", 4)):
        write_evals(tmp_path, seed, arm, [row(40, "q1", right, 1)])
    rows = run_c.testbed_raw(claim, tmp_path)
    by_name = {c.name: c for c in claim.comparisons}
    assert report.comparison_data(claim, by_name["sum_pass_no_loss"], rows) == {"b0/s0": {"q1": (1.0, 0.5)}}
    assert report.comparison_data(claim, by_name["sum_vs_outcome"], rows) == {"b0/s0": {"q1": (0.75, 0.5)}}


def test_jobs_run_independent_steps_together_and_only_those(tmp_path):
    steps = [run.Step(f"s{i}", ["python", "-c", f"print({i})"], tmp_path / f"{i}.done", mark=True,
                      log=tmp_path / f"{i}.log") for i in range(3)]
    run.run_steps(steps, dry_run=False, jobs=2)
    assert all(s.done.is_file() and s.log.read_text() == f"{i}\n" for i, s in enumerate(steps))
    with pytest.raises(SystemExit, match="read each other's outputs"):
        run.main(["d_search", "--jobs", "2"])


def work_dir(tmp_path):
    """An --out holding c_lucky's sets.json as drawn (one problem a set), so the runner reuses it."""
    out = tmp_path / "work"
    out.mkdir()
    sets = {s.name: {"role": s.role.value, "generator_seeds": list(s.generator_seeds), "per_seed": s.per_seed,
                     "problems": 1, "dropped": 0} for s in load_claim(claim_path("c_lucky")).problem_sets}
    (out / "sets.json").write_text(json.dumps(sets))
    return out


def test_collect_writes_the_finished_runs_rows_and_runs_nothing(tmp_path, monkeypatch):
    """--collect: no build or arm runs (both stubbed to fail); the raw file holds the rows of the runs that
    reached round 40, and the report is made from them."""
    out = work_dir(tmp_path)
    write_evals(out, 0, "outcome_c", [row(40, "q1", 2, 1)])
    write_evals(out, 1, "outcome_c", [row(35, "q1", 2, 1)])          # still running: no rows

    def refuse(*args, **kwargs):
        raise AssertionError("--collect ran a step")
    monkeypatch.setattr(run, "run_step", refuse)
    monkeypatch.setattr(run, "run_steps", refuse)
    monkeypatch.setattr(run, "ROOT", tmp_path)
    monkeypatch.setattr(report, "report", lambda name: f"table of ({name})")
    run.main(["c_lucky", "--collect", "--out", str(out)])
    rows = report.read_raw(tmp_path / load_claim(claim_path("c_lucky")).raw)
    assert sorted((r["unit"], r.get("metric", "mean"), r["value"]) for r in rows) == [
        ("b0/s0", "held_out_pass", 0.5), ("b0/s0", "mean", 0.5)]


def test_stage_2_takes_stage_1s_best_form_once_it_holds(monkeypatch):
    """c_lucky_dense: every arm but outcome only gets the credit form of stage 1's largest estimate, and only
    once stage 1 holds; the implicit reward keeps PRIME's sum where that form is first_error."""
    from types import SimpleNamespace
    from bench.claims import report
    from bench.claims.stats import Status

    def result(treatment, mean, primary=True):
        return SimpleNamespace(comparison=SimpleNamespace(treatment=treatment, primary=primary),
                               t=SimpleNamespace(mean=mean))
    results = [result("judge_sum_c", 0.02), result("judge_min_c", 0.05), result("judge_first_error_c", 0.03),
               result("judge_sum_c", 0.09, primary=False)]
    monkeypatch.setattr(report, "table_results", lambda table: {"c_lucky": results})
    monkeypatch.setattr(report, "claim_status", lambda claim, res: Status.undecided)
    assert run_c.stage1_form("c_lucky") is None
    monkeypatch.setattr(report, "claim_status", lambda claim, res: Status.holds)
    assert run_c.stage1_form("c_lucky") == "min"
    claim = load_claim(claim_path("c_lucky_dense"))
    assert run_c.stage2_settings(claim, "outcome_c", "min") == []
    assert run_c.stage2_settings(claim, "prm_c", "first_error") == ["algo.process_credit=first_error"]
    lr = run_c.IMPLICIT_LR["chain_lucky"]
    assert run_c.stage2_settings(claim, "implicit_c", "first_error") == ["algo.process_credit=sum",
                                                                        f"algo.implicit_lr={lr}"]
    assert run_c.stage2_settings(load_claim(claim_path("c_lucky")), "judge_sum_c", "min") == []


def test_stage_2_arms_are_not_made_while_stage_1_does_not_hold(tmp_path, monkeypatch):
    """Beside waits_for: the stage-2 commands need stage 1's form, and none is made before it holds."""
    monkeypatch.setattr(run_c, "stage1_form", lambda stage1: None)
    with pytest.raises(SystemExit, match=r"stage 1, claim \(c_lucky\), does not hold"):
        run_c.testbed_steps(load_claim(claim_path("c_lucky_dense")), tmp_path)
    monkeypatch.setattr(run_c, "stage1_form", lambda stage1: "sum")
    assert len(run_c.testbed_steps(load_claim(claim_path("c_lucky_dense")), tmp_path)) == 60


def test_seeds_run_only_the_named_seeds_with_their_own_training_problems(tmp_path, monkeypatch, capsys):
    """--seeds 7 9: the runs of seeds 7 and 9 alone, each on the train set's generator seed of its place in the
    claim's list (first + 7, first + 9), as in a run of every seed."""
    claim = load_claim(claim_path("c_lucky"))
    first = next(s for s in claim.problem_sets if s.name == "train").generator_seeds[0]
    monkeypatch.setattr(run, "drawn_sets", lambda claim, out, draw: {"test": {"problems": 1, "dropped": 0}})
    run.main(["c_lucky", "--dry-run", "--seeds", "7", "9", "--out", str(tmp_path)])
    argvs = [shlex.split(line[2:].split("  >> ")[0]) for line in capsys.readouterr().out.splitlines()
             if line.startswith("$ python -m rl.online")]
    assert len(argvs) == 2 * len(claim.arms)
    def arg(argv, key):
        return next(a for a in argv if a.startswith(key))
    seeds = {arg(argv, "trainer.seed="): arg(argv, "task.seed=") for argv in argvs}
    assert seeds == {"trainer.seed=7": f"task.seed={first + 7}", "trainer.seed=9": f"task.seed={first + 9}"}
    assert {s.policy.name for s in run_c.testbed_steps(claim, tmp_path)} == {"chain-tiny-lucky"}   # its weights recorded
    with pytest.raises(SystemExit, match=r"--seeds \[15\]: not in claim \(c_lucky\)"):
        run.main(["c_lucky", "--dry-run", "--seeds", "14", "15", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="not per seed"):
        run.main(["d_search", "--dry-run", "--seeds", "0", "--out", str(tmp_path)])


def test_builds_run_only_the_named_policy_builds_steps(tmp_path, monkeypatch, capsys):
    """--builds 2 on claim (d): build 2's policy, pool, PRM and both search settings, and nothing of 0 or 1."""
    monkeypatch.setattr(run, "drawn_sets", lambda claim, out, draw: {"test": {"problems": 1, "dropped": 0}})
    run.main(["d_search", "--dry-run", "--builds", "2", "--out", str(tmp_path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(lines) == 5 and "tasks.chain.policy --seed 2" in lines[0]
    assert all(str(tmp_path / "build2") in line for line in lines[1:])
    assert not any("build0" in line or "build1" in line or "--seed 0" in line for line in lines)
    picked = run.picked(load_claim(claim_path("d")), run.search_steps(load_claim(claim_path("d")), tmp_path), None, [2])
    assert {s.policy for s in picked} == {run.build_dir(2)}
    with pytest.raises(SystemExit, match=r"--builds \[3\]: not in claim \(d\)"):
        run.main(["d_search", "--dry-run", "--builds", "3", "--out", str(tmp_path)])


def test_merge_keeps_the_committed_rows_of_units_run_elsewhere(tmp_path, monkeypatch):
    """--collect --merge: the committed rows of seed 0 (run on another machine) stay; seed 1's committed rows
    are replaced by its run under --out. Without --merge only --out's runs are written."""
    out = work_dir(tmp_path)
    claim = load_claim(claim_path("c_lucky"))
    write_evals(out, 1, "outcome_c", [row(40, "q1", 4, 1)])
    raw = tmp_path / claim.raw
    raw.parent.mkdir(parents=True)
    committed = [{"unit": "b0/s0", "arm": "outcome_c", "problem": "q1", "value": 0.25},
                 {"unit": "b0/s1", "arm": "outcome_c", "problem": "q1", "value": 0.0}]
    raw.write_text("".join(json.dumps(r) + "\n" for r in committed))
    code = raw.with_name(raw.stem + ".code.json")
    code.write_text(json.dumps({"abc": ["c_lucky b0 s0 outcome_c"]}))
    (out / "code.jsonl").write_text(json.dumps({"step": "c_lucky b0 s1 outcome_c", "code": "def", "at": "x"}) + "\n")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    monkeypatch.setattr(report, "report", lambda name: f"table of ({name})")
    run.main(["c_lucky", "--collect", "--merge", "--out", str(out)])
    rows = report.read_raw(raw)
    assert sorted((r["unit"], r.get("metric", "mean"), r["value"]) for r in rows) == [
        ("b0/s0", "mean", 0.25), ("b0/s1", "held_out_pass", 1.0), ("b0/s1", "mean", 0.75)]
    assert json.loads(code.read_text()) == {"abc": ["c_lucky b0 s0 outcome_c"], "def": ["c_lucky b0 s1 outcome_c"]}
    run.main(["c_lucky", "--collect", "--out", str(out)])
    assert {r["unit"] for r in report.read_raw(raw)} == {"b0/s1"}
    assert json.loads(code.read_text()) == {"def": ["c_lucky b0 s1 outcome_c"]}


def test_compare_says_whether_each_run_reproduces_the_committed_rows_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """--collect --compare: seed 0 rerun gives its committed rows (in another order), seed 1 one value off,
    seed 2 was never committed; the raw file is left as it was."""
    out = work_dir(tmp_path)
    claim = load_claim(claim_path("c_lucky"))
    for seed in (0, 1, 2):
        write_evals(out, seed, "outcome_c", [row(40, "q1", 4, 1), row(40, "q2", 2, 0)])
    committed = [{"unit": "b0/s0", "arm": "outcome_c", "problem": "q2", "metric": "held_out_pass", "value": 0.5},
                 {"unit": "b0/s0", "arm": "outcome_c", "problem": "q1", "metric": "held_out_pass", "value": 1.0},
                 {"unit": "b0/s0", "arm": "outcome_c", "problem": "q1", "value": 0.75},
                 {"unit": "b0/s0", "arm": "outcome_c", "problem": "q2", "value": 1.0},
                 {"unit": "b0/s1", "arm": "outcome_c", "problem": "q1", "value": 0.5},
                 {"unit": "b0/s1", "arm": "outcome_c", "problem": "q2", "value": 1.0}]
    raw = tmp_path / claim.raw
    raw.parent.mkdir(parents=True)
    raw.write_text("".join(json.dumps(r) + "\n" for r in committed))
    before = raw.read_text()
    monkeypatch.setattr(run, "ROOT", tmp_path)
    run.main(["c_lucky", "--collect", "--compare", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "b0/s0 outcome_c: 4 rows, identical to the committed rows" in printed
    assert "b0/s1 outcome_c: differs: 3 of 4 rows not committed, 1 of 2 committed rows not here" in printed
    assert "b0/s2 outcome_c: 4 rows, none committed" in printed
    assert raw.read_text() == before and not raw.with_name(raw.stem + ".code.json").exists()
