"""bench/bench_chain_pool.py's selectors (rl.search_select's), pass (the answer checker), tau tuning
(prm.eval's) and per-kind AUROC, pinned on hand-computed cases."""
import pytest

from bench.bench_chain_pool import best_of_n, error_kind, judged, kind_auroc, majority, tuned, weighted
from tasks.chain.problems import ChainSpec, chain_problems
from tasks.problems import Trajectory

Q = "What is (2 * 7) + 3?"   # 2 * 7 = 14, 14 + 3 = 17


def traj(steps, first_error, passed, q=Q, answer="17"):
    return Trajectory(q, steps, first_error, answer, meta={"passed": passed})


RIGHT = ["2 * 7 = 14", "14 + 3 = 17", "The answer is 17."]
MISCONCEIVED = ["2 * 7 = 12", "12 + 3 = 15", "The answer is 15."]   # x * 7 written as x * 6
SLIP = ["2 * 7 = 14", "14 + 3 = 18", "The answer is 18."]


def test_error_kinds():
    assert error_kind(traj(MISCONCEIVED, 0, False)) == "misconception"
    assert error_kind(traj(SLIP, 1, False)) == "slip"
    assert error_kind(traj(["2 + 7 = 9", "9 + 3 = 12", "The answer is 12."], 0, False)) == "other"


def test_selectors_by_hand():
    items = [traj(MISCONCEIVED, 0, False), traj(MISCONCEIVED, 0, False), traj(RIGHT, -1, True), traj(SLIP, 1, False)]
    scores = [[0.9, 0.9, 0.9], [0.8, 0.8, 0.8], [0.7, 0.95, 0.9], [0.99, 0.2, 0.9]]
    # min-step scores 0.9, 0.8, 0.7, 0.2: best-of-4 picks the first (wrong); best-of-1 likewise
    assert best_of_n(items, scores) == 0.0 and best_of_n(items, scores, 1) == 0.0
    # weighted: "15" gets 0.9 + 0.8 = 1.7, "17" 0.7, "18" 0.2 -> wrong; majority: "15" twice -> wrong
    assert weighted(items, scores) == 0.0 and majority(items) == 0.0
    # the first 3 samples only (15, 15, 17): "15" 1.7 against "17" 0.7
    assert weighted(items, scores, 3) == 0.0
    flipped = [[0.3, 0.3, 0.3], [0.3, 0.3, 0.3], [0.7, 0.95, 0.9], [0.99, 0.2, 0.9]]
    # 15: 0.6, 17: 0.7 -> right; best-of-n: 0.7 is the highest min -> right
    assert weighted(items, flipped) == 1.0 and best_of_n(items, flipped) == 1.0


def test_selectors_skip_unanswered_samples_and_group_answers_by_value():
    cut = traj(["2 * 7 = 14", "14 + 3 ="], 1, False)          # cut at max_new_tokens: no answer
    bare = traj(["2 * 7 = 14", "14 + 3 = 17", "The answer is 17"], -1, True)   # no final period
    items = [cut, traj(MISCONCEIVED, 0, False), traj(RIGHT, -1, True), bare]
    scores = [[0.99, 0.99], [0.5, 0.5, 0.5], [0.4, 0.4, 0.4], [0.3, 0.3, 0.3]]
    # best-of-n: the unanswered 0.99 is never picked; of the answered, 0.5 (wrong) is the highest min
    assert best_of_n(items, scores) == 0.0 and best_of_n(items, [[0.99, 0.99], [0.2] * 3, [0.4] * 3, [0.3] * 3]) == 1.0
    # weighted: "17" and "17." are one answer, 0.4 + 0.3 = 0.7 against "15" 0.5 -> right; majority: 2 votes to 1
    assert weighted(items, scores) == 1.0 and majority(items) == 1.0
    # only unanswered samples among the first n: nothing picked, unsolved
    assert best_of_n(items, scores, 1) == 0.0 and weighted(items, scores, 1) == 0.0


def test_passed_is_the_answer_checkers_verdict_on_the_completion():
    problem = chain_problems(7, 1, ChainSpec())[0]
    ref = problem.reference_answer
    texts = [f"The answer is {ref}.", f"The answer is {ref}", f"The answer is {ref}.\n\nok", f"The answer is {ref}1.",
             "no answer here"]
    assert [t.meta["passed"] for t in judged([(problem, text) for text in texts])] == [True, True, True, False, False]


def test_tau_is_tuned_by_the_library_on_the_bench_grid():
    # every tune item erroneous: F1 undefined; the grid tau naming the most first errors, the smallest on ties
    tune = [traj(SLIP, 1, False), traj(MISCONCEIVED, 0, False)]
    scores = [[0.9, 0.3, 0.9], [0.55, 0.9, 0.9]]
    assert tuned(tune, scores) == 0.56     # 0.56 .. 0.9 name both (0.3 < tau <= 0.9 and 0.55 < tau)


def test_kind_auroc_by_hand():
    items = [traj(MISCONCEIVED, 0, False), traj(SLIP, 1, False), traj(RIGHT, -1, True)]
    scores = [[0.9, 0.5, 0.5], [0.8, 0.1, 0.5], [0.6, 0.95, 0.7]]
    # correct steps: the slip trajectory's step 0 (0.8) and the right one's three (0.6, 0.95, 0.7)
    # misconception errors: 0.9 -> beats all four correct steps but 0.95: wins for correct = 1 of 4
    assert kind_auroc(items, scores, "misconception") == pytest.approx(1 / 4)
    # slip errors: 0.1, below every correct step; the misconceived trajectory adds no correct step
    assert kind_auroc(items, scores, "slip") == pytest.approx(1.0)


def test_product_auroc_ranks_right_against_wrong_x7_x8_products_only():
    """Only "a * 7 = v" / "a * 8 = v" steps count, each checked on its own operands: right products 0.9 and
    0.3, wrong ones 0.5 and 0.1 -> 3 of 4 pairs ordered right = 0.75 (other steps' scores are ignored)."""
    from bench.chain_misconception_auroc import product_auroc
    steps = [RIGHT, MISCONCEIVED, ["4 * 8 = 32", "32 - 1 = 31"], ["4 * 8 = 28", "28 * 2 = 56"]]
    scores = [[0.9, 0.0, 0.0], [0.5, 1.0, 1.0], [0.3, 1.0], [0.1, 0.0]]
    assert product_auroc(steps, scores) == pytest.approx(0.75)
    assert product_auroc(steps, [[1 - x for x in s] for s in scores]) == pytest.approx(0.25)


def test_runs_stage_resumes_without_training_a_finished_run_again(tmp_path, monkeypatch):
    """A killed run set restarted: every (mode, budget, seed) row is written once, in the original order."""
    import json

    import bench.bench_chain_pool as pool_mod
    trained = []

    def fake_run(args, out, pool, tune, test, cache, mode, budget, seed):
        trained.append((mode, budget, seed))
        if len(trained) == 4 and not (tmp_path / "killed").exists():
            (tmp_path / "killed").touch()
            raise KeyboardInterrupt
        return {"mode": mode, "budget": budget, "seed": seed}
    monkeypatch.setattr(pool_mod, "one_run", fake_run)
    monkeypatch.setattr(pool_mod, "load", lambda out, name: [])
    monkeypatch.setattr(pool_mod, "features", lambda *a: None)
    (tmp_path / "baselines.json").write_text("{}")
    args = pool_mod.parse_args(["--stage", "runs", "--out", str(tmp_path), "--budgets", "0.1", "0.3", "--seeds", "0", "1"])
    with pytest.raises(KeyboardInterrupt):
        pool_mod.stage_runs(args, tmp_path)
    pool_mod.stage_runs(args, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    order = [(m, b, s) for s in (0, 1) for m, b in [("active", .1), ("random", .1), ("active", .3), ("random", .3),
                                                   ("full", 1.0)]]
    assert [(r["mode"], r["budget"], r["seed"]) for r in rows] == order
    assert len(trained) == len(order) + 1          # only the interrupted run trained twice
