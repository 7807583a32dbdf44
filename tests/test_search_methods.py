"""Search algorithms against deterministic stub policies and scorers (no model needed).

Step texts carry their own PRM score: "[0.7] ..." (mean 0.7) or "[0.7,0.2] ..." (mean 0.7, std 0.2).
"""
from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

from rl.search_methods import (Continuation, SearchProblem, SearchSettings, beam_search, best_of_n, dvts, greedy,
                               prefix_cost)
from rl.search_select import SELECTORS, ScoreSpec, Solution, canonical_answer

PROMPT = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
PROBLEM = SearchProblem("Q", PROMPT, "5")
_TAG = re.compile(r"^\[([\d.]+)(?:,([\d.]+))?\]")


def tagged_scorer(calls=None):
    def score(questions, steps_list):
        if calls is not None:
            calls.append(len(steps_list))
        out = []
        for steps in steps_list:
            tags = [_TAG.match(s) for s in steps]
            out.append(SimpleNamespace(mean=[float(t.group(1)) if t else 0.5 for t in tags],
                                       std=[float(t.group(2) or 0) if t else 0.0 for t in tags]))
        return out
    return score


class FixedSamples:
    """Full-solution mode: the i-th sample of every prompt is texts[i]."""

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def __call__(self, contexts, n, one_step, greedy=False):
        self.calls.append((len(contexts), n, one_step, greedy))
        return [[Continuation(self.texts[i % len(self.texts)], 10 + i) for i in range(n)] for _ in contexts]


class TreePolicy:
    """Step mode: a context at depth d gets children "[v] d{d}.{draw}.{k}"; `draw` counts expansions,
    so two expansions of the same context (two DVTS subtrees) give different children."""

    def __init__(self, value, finishes=lambda d, draw, k: False, answer=lambda d, draw, k: "5"):
        self.value, self.finishes, self.answer = value, finishes, answer
        self.calls, self.draws = [], 0

    def __call__(self, contexts, n, one_step, greedy=False):
        self.calls.append((list(contexts), n, one_step))
        out = []
        for ctx in contexts:
            assert ctx.startswith(PROMPT)
            depth = len([s for s in ctx[len(PROMPT):].split("\n\n") if s])
            draw, self.draws = self.draws, self.draws + 1
            conts = []
            for k in range(n):
                ends = self.finishes(depth, draw, k) or not one_step
                text = f"[{self.value(depth, draw, k)}] d{depth}.{draw}.{k}"
                if ends:
                    text += f" The answer is {self.answer(depth, draw, k)}"
                conts.append(Continuation(text, 3, step_end=not ends))
            out.append(conts)
        return out


def sol(score, answer, std=0.0):
    return Solution([f"[{score},{std}] The answer is {answer}"], 1, [score], [std], answer, canonical_answer(answer))


# ---------------------------------------------------------------- aggregation + selection
def test_aggregations_last_min_prod_and_mean_minus_std():
    s = Solution(["a", "b", "c"], 3, mean=[0.9, 0.2, 0.5], std=[0.1, 0.0, 0.2])
    assert ScoreSpec("last").solution_score(s) == 0.5
    assert ScoreSpec("min").solution_score(s) == 0.2
    assert ScoreSpec("prod").solution_score(s) == pytest.approx(0.09)
    assert ScoreSpec("last", beta=1.0).solution_score(s) == pytest.approx(0.3)
    assert ScoreSpec("min", beta=2.0).solution_score(s) == pytest.approx(0.1)
    assert ScoreSpec("prod", beta=1.0).solution_score(s) == pytest.approx(0.8 * 0.2 * 0.3)
    penalised_below_zero = Solution(["a", "b"], 2, mean=[0.1, 0.9], std=[0.3, 0.0])
    assert ScoreSpec("prod", beta=1.0).solution_score(penalised_below_zero) == 0.0   # clipped, not negative
    assert ScoreSpec("last").solution_score(Solution([], 0)) == -math.inf
    with pytest.raises(ValueError):
        ScoreSpec("mean")


def test_weighted_sums_per_answer_not_per_sample():
    sols = [sol(0.9, "7"), sol(0.5, "3"), sol(0.5, "3.0")]   # "3" and "3.0" are one answer
    spec = ScoreSpec()
    assert sols[SELECTORS["weighted"](sols, spec)].answer == "3"      # 0.5 + 0.5 > 0.9
    assert sols[SELECTORS["vanilla"](sols, spec)].answer == "7"
    assert sols[SELECTORS["majority"](sols, spec)].answer == "3"
    sols = [sol(0.1, "1"), sol(0.1, "1"), sol(0.9, "2")]
    assert sols[SELECTORS["weighted"](sols, spec)].answer == "2"      # 0.9 > 0.2
    assert sols[SELECTORS["majority"](sols, spec)].answer == "1"


def test_uncertainty_penalty_changes_the_weighted_choice():
    sols = [sol(0.8, "1", std=0.3), sol(0.6, "2", std=0.0)]
    assert sols[SELECTORS["weighted"](sols, ScoreSpec())].answer == "1"
    assert sols[SELECTORS["weighted"](sols, ScoreSpec(beta=1.0))].answer == "2"


def test_ties_break_to_the_earliest_sample_deterministically():
    for _ in range(3):
        sols = [sol(0.5, "9"), sol(0.5, "4"), sol(0.5, "4"), sol(0.5, "9")]
        for name in SELECTORS:
            assert SELECTORS[name](sols, ScoreSpec()) == 0, name
        swapped = [sols[1], sols[0], sols[2], sols[3]]
        for name in SELECTORS:
            assert swapped[SELECTORS[name](swapped, ScoreSpec())].answer == "4", name


def test_unanswered_samples_do_not_vote():
    sols = [Solution(["[0.99] rambling"], 1, [0.99], [0.0]), sol(0.2, "3")]
    for name in SELECTORS:
        assert SELECTORS[name](sols, ScoreSpec()) == 1
    assert SELECTORS["weighted"]([Solution([], 0)], ScoreSpec()) is None


@pytest.mark.parametrize("a,b", [("72", "72.0"), ("1,000", "1000"), ("\\frac{1}{2}", "0.5"), ("1/2", "0.5"),
                                 ("$18", "18"), ("\\text{Monday}", "monday"), ("-3", "-3.00")])
def test_canonical_answer_groups_equal_values(a, b):
    assert canonical_answer(a) == canonical_answer(b)


def test_canonical_answer_keeps_different_values_apart():
    assert canonical_answer("12") != canonical_answer("21")
    assert canonical_answer(None) is None


# ---------------------------------------------------------------- best-of-N
def test_best_of_n_samples_once_and_prefixes_are_that_sample_set():
    texts = [f"[0.{i + 1}] step\n\n[0.{9 - i}] The answer is {i % 3}" for i in range(8)]
    policy = FixedSamples(texts)
    calls = []
    out = best_of_n([PROBLEM, SearchProblem("Q2", PROMPT)], policy, tagged_scorer(calls), SearchSettings(n=8))
    assert policy.calls == [(2, 8, False, False)]     # one sampling round for every n' <= 8
    assert calls == [16]                              # one PRM call for all samples of all problems
    sols = out[0].solutions
    assert [s.text for s in sols] == [t for t in texts]
    assert [s.answer for s in sols] == [str(i % 3) for i in range(8)]
    assert sols[0].mean == [0.1, 0.9]
    first4 = prefix_cost(sols[:4])
    assert first4.generated_tokens == 10 + 11 + 12 + 13 and first4.prm_passes == 4 and first4.scored_steps == 8
    assert out[0].cost.generated_tokens == sum(10 + i for i in range(8)) and out[0].cost.prm_passes == 8


def test_greedy_is_one_unscored_greedy_sample():
    policy = FixedSamples(["The answer is 5"])
    out = greedy([PROBLEM], policy, tagged_scorer(), SearchSettings(n=16))
    assert policy.calls == [(1, 1, False, True)]
    assert [s.answer for s in out[0].solutions] == ["5"] and out[0].cost.prm_passes == 0


# ---------------------------------------------------------------- beam search
def test_beam_keeps_n_over_m_and_refills_each_to_m():
    policy = TreePolicy(value=lambda d, draw, k: round(0.1 + 0.05 * ((draw * 7 + k * 3) % 17), 2))
    out = beam_search([PROBLEM], policy, tagged_scorer(), SearchSettings(n=8, beam_width=2, max_iterations=4))
    shapes = [(len(ctxs), n, one_step) for ctxs, n, one_step in policy.calls]
    assert shapes == [(8, 1, True), (8, 1, True), (8, 1, True), (8, 1, False)]   # exactly n every iteration
    assert [t["kept"] for t in out[0].trace] == [4, 4, 4, 0]
    for ctxs, _, _ in policy.calls[1:]:   # 4 survivors, each repeated M = 2 times, in turn
        assert ctxs[:4] == ctxs[4:] and len(set(ctxs)) == 4
    assert len(out[0].solutions) == 8 and all(len(s.steps) == 4 for s in out[0].solutions)


def test_beam_keeps_n_beams_alive_when_one_parent_survives():
    # n = 8, M = 2: after step 1 only one beam is unfinished; search-and-learn gives it all 8 slots
    # (a fixed M children per survivor would shrink the search to 2 beams).
    policy = TreePolicy(value=lambda d, draw, k: 0.5, finishes=lambda d, draw, k: d >= 1 or draw != 0)
    out = beam_search([PROBLEM], policy, tagged_scorer(), SearchSettings(n=8, beam_width=2, max_iterations=3))
    assert out[0].trace[0] == {"iteration": 0, "expanded": 8, "finished": 7, "kept": 1}
    second = policy.calls[1][0]
    assert len(second) == 8 and len(set(second)) == 1 and "d0.0.0" in second[0]
    assert out[0].trace[1]["expanded"] == 8
    # 7 finished after step 1, all 8 at step 2: the first 8 to finish are the result, the search stops
    assert len(out[0].solutions) == 8 and [len(s.steps) for s in out[0].solutions] == [1] * 7 + [2]
    assert len(policy.calls) == 2


def test_beam_returns_the_first_n_finished_or_the_best_n_and_pads_to_n():
    values = [0.2, 0.9, 0.4, 0.3]
    policy = TreePolicy(value=lambda d, draw, k: values[draw] if d == 0 else 0.1 * (draw % 7),
                        finishes=lambda d, draw, k: d == 1)
    first = beam_search([PROBLEM], policy, tagged_scorer(), SearchSettings(n=4, beam_width=2, max_iterations=3))
    assert len(first[0].solutions) == 4 and first[0].trace[-1]["iteration"] == 1
    policy = TreePolicy(value=lambda d, draw, k: values[draw] if d == 0 else 0.1 * (draw % 7),
                        finishes=lambda d, draw, k: d == 1)
    best = beam_search([PROBLEM], policy, tagged_scorer(),
                       SearchSettings(n=4, beam_width=2, max_iterations=3, sort_completed=True))
    scores = [ScoreSpec().solution_score(s) for s in best[0].solutions]
    assert scores == sorted(scores, reverse=True)
    # fewer than n finished: the finished ones repeated in turn (search-and-learn pads to n)
    policy = TreePolicy(value=lambda d, draw, k: 0.5, finishes=lambda d, draw, k: draw == 0)
    out = beam_search([PROBLEM], policy, tagged_scorer(), SearchSettings(n=4, beam_width=2, max_iterations=1))
    assert len(out[0].solutions) == 4


def test_beam_filter_duplicates_drops_repeated_prefixes():
    # Every beam writes the same first step: with filtering one of them survives (and gets all n
    # slots); without, the top n/M = 2 identical copies survive.
    class SameStep(TreePolicy):
        def __call__(self, contexts, n, one_step, greedy=False):
            self.calls.append((list(contexts), n, one_step))
            return [[Continuation("[0.5] same", 3, step_end=True) for _ in range(n)] for _ in contexts]
    for flag, kept in ((False, 2), (True, 1)):
        out = beam_search([PROBLEM], SameStep(None), tagged_scorer(),
                          SearchSettings(n=4, beam_width=2, max_iterations=2, filter_duplicates=flag))
        assert out[0].trace[0]["kept"] == kept


def _ranking_tree(depth, draw, k):
    if depth == 0:
        return [0.9, 0.2, 0.6, 0.5][draw]          # keep c0 (0.9) and c2 (0.6); c0 is expanded first
    if depth == 1:
        return {4: 0.7, 5: 0.8, 6: 0.65, 7: 0.75}[draw]
    return 0.5


@pytest.mark.parametrize("aggregate,parent", [("last", "d0.2.0"), ("min", "d0.0.0"), ("prod", "d0.0.0")])
def test_beam_ranks_prefixes_by_the_configured_aggregate(aggregate, parent):
    # After step 2, 'last' prefers c2's children (0.8, 0.75); 'min' and 'prod' prefer c0's (0.9 then 0.7/0.65).
    policy = TreePolicy(_ranking_tree)
    beam_search([PROBLEM], policy, tagged_scorer(),
                SearchSettings(n=4, beam_width=2, max_iterations=3, spec=ScoreSpec(aggregate)))
    second = [c[len(PROMPT):].split("\n\n")[0] for c in policy.calls[1][0]]
    assert second == ["[0.9] d0.0.0", "[0.6] d0.2.0"] * 2
    third = policy.calls[2][0]
    assert len(third) == 4 and all(parent in c for c in third)


def test_finished_beams_leave_the_pool():
    policy = TreePolicy(value=lambda d, draw, k: [0.95, 0.9, 0.4, 0.3][draw] if d == 0 else 0.5,
                        finishes=lambda d, draw, k: d == 0 and draw == 0)
    out = beam_search([PROBLEM], policy, tagged_scorer(), SearchSettings(n=4, beam_width=2, max_iterations=2))
    assert out[0].trace[0] == {"iteration": 0, "expanded": 4, "finished": 1, "kept": 2}
    assert len(policy.calls[1][0]) == 4 and not any("d0.0.0" in c for c in policy.calls[1][0])
    assert len(out[0].solutions) == 4 and out[0].solutions[0].steps == ["[0.95] d0.0.0 The answer is 5"]


# ---------------------------------------------------------------- DVTS
def test_dvts_subtrees_keep_their_own_best_and_share_no_state():
    # Subtree 0's first draw is strong (0.9, 0.8), subtree 1's weak (0.1, 0.2): a shared pool would put
    # both subtrees on subtree 0's candidates; independent subtrees each keep their own best.
    def value(depth, draw, k):
        return {0: [0.9, 0.8], 1: [0.1, 0.2]}[draw][k] if depth == 0 else 0.5
    policy = TreePolicy(value)
    out = dvts([PROBLEM], policy, tagged_scorer(), SearchSettings(n=4, beam_width=2, max_iterations=3))
    firsts = [s.steps[0] for s in out[0].solutions]
    assert firsts == ["[0.9] d0.0.0"] * 2 + ["[0.2] d0.1.1"] * 2   # each subtree's last M candidates
    for ctxs, _, _ in policy.calls[1:]:                # each subtree extends only its own prefix
        assert [c[len(PROMPT):].split("\n\n")[0] for c in ctxs] == firsts[::2]
    shapes = [(len(ctxs), n) for ctxs, n, _ in policy.calls]
    assert shapes == [(2, 2), (2, 2), (2, 2)]
    assert out[0].solutions[0].steps is not out[0].solutions[2].steps


def test_dvts_returns_n_candidates_and_votes_over_all_of_them():
    # n = 16, M = 4: 4 subtrees x their last 4 candidates. Each final expansion has one high-scored
    # answer "1" and three lower-scored "2"s: the best of each subtree says 1, most candidates say 2.
    policy = TreePolicy(value=lambda d, draw, k: 0.9 if k == 0 else 0.6,
                        answer=lambda d, draw, k: "1" if k == 0 else "2")
    out = dvts([PROBLEM], policy, tagged_scorer(), SearchSettings(n=16, beam_width=4, max_iterations=2))
    sols = out[0].solutions
    assert len(sols) == 16 and [s.answer for s in sols] == ["1", "2", "2", "2"] * 4
    spec = ScoreSpec()
    assert sols[SELECTORS["vanilla"](sols, spec)].answer == "1"
    assert sols[SELECTORS["majority"](sols, spec)].answer == "2"      # 12 votes to 4
    assert sols[SELECTORS["weighted"](sols, spec)].answer == "2"      # 12 x 0.6 = 7.2 > 4 x 0.9 = 3.6


def test_dvts_subtree_ends_at_a_boxed_answer():
    # search-and-learn prunes a DVTS subtree whose text contains "boxed{", even mid-solution
    class Boxed(TreePolicy):
        def __call__(self, contexts, n, one_step, greedy=False):
            out = super().__call__(contexts, n, one_step, greedy)
            first = len(self.calls) == 1   # only subtree 0's first step writes a boxed answer
            return [[Continuation(c.text + (" so \\boxed{5}" if first and i == 0 else ""), c.n_tokens, c.step_end)
                     for c in conts] for i, conts in enumerate(out)]
    policy = Boxed(value=lambda d, draw, k: 0.5)
    out = dvts([PROBLEM], policy, tagged_scorer(), SearchSettings(n=4, beam_width=2, max_iterations=3))
    assert [len(ctxs) for ctxs, _, _ in policy.calls] == [2, 1, 1]   # subtree 0 stopped after its boxed step
    assert [len(s.steps) for s in out[0].solutions] == [1, 1, 3, 3]


def test_dvts_result_per_subtree_matches_running_it_alone():
    value = lambda depth, draw, k: round(0.05 + ((depth * 5 + draw * 3 + k * 7) % 19) / 20, 2)  # noqa: E731
    together = dvts([PROBLEM], TreePolicy(value), tagged_scorer(), SearchSettings(n=4, beam_width=2, max_iterations=3))
    # Alone, subtree 0 sees the draws it saw in the batch (draw ids shift by one per subtree and depth).
    alone = dvts([PROBLEM], TreePolicy(lambda d, draw, k: value(d, 2 * draw, k)), tagged_scorer(),
                 SearchSettings(n=2, beam_width=2, max_iterations=3))
    for a, b in zip(together[0].solutions[:2], alone[0].solutions):
        assert [s.split("] ")[0] for s in a.steps] == [s.split("] ")[0] for s in b.steps]


def test_dvts_finished_subtree_stops_while_others_go_on():
    policy = TreePolicy(value=lambda d, draw, k: 0.5, finishes=lambda d, draw, k: draw == 0)
    out = dvts([PROBLEM], policy, tagged_scorer(), SearchSettings(n=4, beam_width=2, max_iterations=3))
    assert [len(s.steps) for s in out[0].solutions] == [1, 1, 3, 3]
    assert [len(ctxs) for ctxs, _, _ in policy.calls] == [2, 1, 1]
    assert out[0].cost.generated_tokens == 3 * 2 * 4 and out[0].cost.policy_calls == 3


def test_costs_are_charged_per_problem_in_a_batch():
    other = SearchProblem("Q2", PROMPT, "1")
    policy = TreePolicy(value=lambda d, draw, k: 0.5, finishes=lambda d, draw, k: d == 1)
    out = beam_search([PROBLEM, other], policy, tagged_scorer(), SearchSettings(n=4, beam_width=2, max_iterations=3))
    assert out[0].cost == out[1].cost
    assert out[0].cost.generated_tokens == 3 * (4 + 4)
