"""Reward-guided search (docs/method.md, Search): greedy, best-of-N, beam search, DVTS.

Every method runs on a batch of problems at once -- one policy call and one PRM call per iteration
across all problems keeps the backends' batches large -- while each problem (and each DVTS subtree)
keeps its own state. The methods take two callables, so they run the same against a real policy and
PRM (see rl.search) and against deterministic test stubs:

  policy(contexts, n, one_step, greedy) -> list[list[Continuation]]   n continuations per context;
      a context is the chat-formatted prompt plus the partial solution, as text or as token ids (see
      below); with one_step the policy stops at the first blank line ("\\n\\n") and says so in
      Continuation.step_end.
  score(questions, steps_list) -> list[obj with .mean, .std]           per-step PRM scores.

Token-level continuation: a step-wise method continues a beam from the token ids the policy generated
(the prompt's ids, SearchProblem.prompt_ids, plus each step's Continuation.token_ids), as an engine does,
not from its re-tokenized text. Re-tokenizing is not neutral: a tokenizer may spell the same blank line as
one token or two depending on what follows (chain-tiny: "3\\n\\n" ends in one token "\\n\\n", which the
policy only ever followed with another step, while it answers after "\\n","\\n"), so a re-tokenized
context is a context the policy never produced. Where ids are not available (a policy or problem without
them, or a step whose tokens do not end exactly at its separator), that beam continues from its text.

Tie-breaking is deterministic everywhere: among equal scores/votes the earliest candidate wins
(the lowest sample index for best-of-N, the earliest-generated child for beam and DVTS).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from core.steps import STEP_SEPARATOR, clean_step, join_steps, split_steps
from rl.search_select import ScoreSpec, Solution, attach_answer


@dataclass
class Continuation:
    text: str
    n_tokens: int
    step_end: bool = False   # stopped at a step boundary; False: EOS or length, the solution is over
    # step mode: the step's generated ids through the separator that ended it, when they decode to exactly
    # the step's text + separator; None otherwise (a token straddling the separator): continue from text
    token_ids: list[int] | None = None
    forward_tokens: int = 0  # token positions the policy's backbone ran for it (docs/search.md, Compute)


Context = str | list[int]     # the text to continue, or its token ids (prompt ids + generated ids)


class Policy(Protocol):
    def __call__(self, contexts: list[Context], n: int, one_step: bool, greedy: bool = False
                 ) -> list[list[Continuation]]: ...


ScoreFn = Callable[[list[str], list[list[str]]], Sequence]


@dataclass
class SearchProblem:
    question: str
    prompt: str                       # chat-formatted prompt; the assistant turn starts right after it
    reference_answer: str | None = None
    source: str = ""
    prompt_ids: list[int] | None = None   # the prompt's token ids: step-wise search continues from ids


@dataclass
class SearchCompute:
    """Compute one problem's search spent (the equal-compute axis of the summary); a judge's bill is judges.Cost."""
    generated_tokens: int = 0
    prm_passes: int = 0               # sequences through the PRM (identical ones in one call counted once)
    scored_steps: int = 0             # separator positions (steps) read across the scorer's passes
    policy_passes: int = 0            # sequences the policy re-read to score them (the confidence scorer)
    policy_calls: int = 0             # generation rounds this problem took part in
    # the equal-compute axis in the unit of docs/search.md (Compute): token positions run through a backbone,
    # counted by the backend and the scorer as they run them (prefill + decode; the scorer's every backbone)
    policy_forward_tokens: int = 0    # the policy generating
    scorer_forward_tokens: int = 0    # the scorer scoring: the PRM's backbone(s), or the policy re-reading

    def add(self, other: "SearchCompute") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class SearchOutcome:
    solutions: list[Solution]
    cost: SearchCompute
    trace: list[dict] = field(default_factory=list)   # per-iteration beam counts (beam, dvts)


# ---------------------------------------------------------------- PRM calls with cost accounting
class CountingScorer:
    """Calls the scorer for many problems at once; charges each problem for its own sequences.
    Identical (question, steps) sequences in one call run once (beam siblings often coincide).
    `passes`: the SearchCompute field a pass is charged to (prm_passes, or policy_passes when the
    policy scores its own steps). The backbone positions are what the scorer reports per sequence
    (StepScores.forward_tokens: it counts them as it runs them)."""

    def __init__(self, score: ScoreFn, costs: list[SearchCompute], passes: str = "prm_passes"):
        self.score, self.costs, self.passes = score, costs, passes

    def __call__(self, owners: list[int], questions: list[str], solutions: list[Solution]) -> None:
        unique: dict[tuple[str, tuple[str, ...]], int] = {}
        slots = []
        for owner, question, sol in zip(owners, questions, solutions):
            if not sol.steps:
                slots.append(None)
                continue
            key = (question, tuple(sol.steps))
            if key not in unique:
                unique[key] = len(unique)
                setattr(self.costs[owner], self.passes, getattr(self.costs[owner], self.passes) + 1)
                self.costs[owner].scored_steps += len(sol.steps)
            slots.append(unique[key])
        if not unique:
            return
        scored = self.score([q for q, _ in unique], [list(s) for _, s in unique])
        charged = set()
        for owner, sol, slot in zip(owners, solutions, slots):
            if slot is None:
                continue
            sol.mean, sol.std = list(scored[slot].mean), list(scored[slot].std)
            sol.scorer_forward_tokens = getattr(scored[slot], "forward_tokens", 0)
            if slot not in charged:          # the sequence's first owner paid its pass, as above
                charged.add(slot)
                self.costs[owner].scorer_forward_tokens += sol.scorer_forward_tokens


def context_of(prompt: str, steps: list[str]) -> str:
    """The text the policy continues: prompt plus the steps so far, ending at a step boundary."""
    return prompt + (join_steps(steps) + STEP_SEPARATOR if steps else "")


@dataclass
class SearchSettings:
    n: int = 4
    beam_width: int = 4               # M: children per kept beam (beam), candidates per step (dvts)
    max_iterations: int = 10          # step rounds (beam, dvts); the last one runs each beam to its end
    spec: ScoreSpec = field(default_factory=ScoreSpec)
    fallback_last_number: bool = False
    filter_duplicates: bool = False   # beam: drop unfinished beams whose steps repeat an earlier one's
    sort_completed: bool = False      # beam: return the n best-scored finished beams, not the first n
    scorer_passes: str = "prm_passes" # the SearchCompute field the scorer's passes are charged to


def _sample_full(policy: Policy, problems: list[SearchProblem], n: int, greedy: bool, costs: list[SearchCompute]
                 ) -> list[list[Solution]]:
    outs = policy([p.prompt for p in problems], n, one_step=False, greedy=greedy)
    result = []
    for cost, conts in zip(costs, outs):
        cost.policy_calls += 1
        cost.generated_tokens += sum(c.n_tokens for c in conts)
        cost.policy_forward_tokens += sum(c.forward_tokens for c in conts)
        result.append([Solution(split_steps(c.text), c.n_tokens, policy_forward_tokens=c.forward_tokens)
                       for c in conts])
    return result


# ---------------------------------------------------------------- methods
def greedy(problems: list[SearchProblem], policy: Policy, score: ScoreFn, cfg: SearchSettings
           ) -> list[SearchOutcome]:
    """One greedy solution per problem: the floor every search method should beat. Not scored."""
    costs = [SearchCompute() for _ in problems]
    sols = _sample_full(policy, problems, 1, True, costs)
    return [SearchOutcome([attach_answer(s[0], cfg.fallback_last_number)], c) for s, c in zip(sols, costs)]


def best_of_n(problems: list[SearchProblem], policy: Policy, score: ScoreFn, cfg: SearchSettings
              ) -> list[SearchOutcome]:
    """n independent samples per problem, each scored once. Results for n' < n are read off the
    first n' samples (see prefix_cost), so every n' comes from the same sample set."""
    costs = [SearchCompute() for _ in problems]
    per_problem = _sample_full(policy, problems, cfg.n, False, costs)
    owners = [i for i, sols in enumerate(per_problem) for _ in sols]
    flat = [s for sols in per_problem for s in sols]
    CountingScorer(score, costs, cfg.scorer_passes)(owners, [problems[i].question for i in owners], flat)
    return [SearchOutcome([attach_answer(s, cfg.fallback_last_number) for s in sols], c)
            for sols, c in zip(per_problem, costs)]


def prefix_cost(solutions: list[Solution], passes: str = "prm_passes") -> SearchCompute:
    """What best-of-N spends on these samples alone (a prefix of the full run): each sample's generation,
    and one scoring pass per distinct sample, at the positions its pass ran (the first copy's)."""
    unique: dict[tuple[str, ...], Solution] = {}
    for s in solutions:
        if s.steps:
            unique.setdefault(tuple(s.steps), s)
    return SearchCompute(generated_tokens=sum(s.n_tokens for s in solutions), scored_steps=sum(len(u) for u in unique),
                         policy_calls=1, policy_forward_tokens=sum(s.policy_forward_tokens for s in solutions),
                         scorer_forward_tokens=sum(s.scorer_forward_tokens for s in unique.values()),
                         **{passes: len(unique)})


@dataclass
class _Beam:
    steps: list[str]
    n_tokens: int = 0
    finished: bool = False
    solution: Solution | None = None
    ids: list[int] | None = None      # the prompt's and the generated token ids; None: continue from text


def _child_ids(parent: _Beam, c: Continuation) -> list[int] | None:
    return parent.ids + c.token_ids if parent.ids is not None and c.token_ids is not None else None


def _expand(problems, policy, scorer, costs, frontier: list[list[_Beam]], width: int, last: bool,
            fallback: bool) -> list[list[_Beam]]:
    """Sample one more step for every beam of every problem (`width` children each), score the
    children's prefixes with the PRM, and return the children per problem in generation order."""
    owners = [p for p, beams in enumerate(frontier) for _ in beams]
    beams = [b for bs in frontier for b in bs]
    children: list[list[_Beam]] = [[] for _ in problems]
    contexts = [b.ids if b.ids is not None else context_of(problems[p].prompt, b.steps) for p, b in zip(owners, beams)]
    outs = policy(contexts, width, one_step=not last)
    for p, parent, conts in zip(owners, beams, outs):
        for c in conts:
            step = clean_step(c.text)
            steps = parent.steps + [step] if step else list(parent.steps)
            # An empty step cannot move the beam on: treat it like the end of the solution.
            child = _Beam(steps, parent.n_tokens + c.n_tokens, last or not c.step_end or not step,
                          ids=_child_ids(parent, c))
            child.solution = Solution(steps, child.n_tokens)
            children[p].append(child)
            costs[p].generated_tokens += c.n_tokens
            costs[p].policy_forward_tokens += c.forward_tokens
    for p in set(owners):
        costs[p].policy_calls += 1
    flat_owners = [p for p, ch in enumerate(children) for _ in ch]
    flat = [c.solution for ch in children for c in ch]
    scorer(flat_owners, [problems[p].question for p in flat_owners], flat)
    for ch in children:
        for c in ch:
            attach_answer(c.solution, fallback)
    return children


def _rank(beams: list[_Beam], spec: ScoreSpec) -> list[_Beam]:
    order = sorted(range(len(beams)), key=lambda i: (-spec.solution_score(beams[i].solution), i))
    return [beams[i] for i in order]


def _refill(beams: list[_Beam], n: int) -> list[_Beam]:
    """The survivors repeated in turn until there are exactly n (search-and-learn: (beams * r)[:n])."""
    return [beams[i % len(beams)] for i in range(n)] if beams else []


def _unique_steps(beams: list[_Beam]) -> list[_Beam]:
    first = {tuple(b.steps): b for b in reversed(beams)}   # the earliest beam of each step list
    return [b for b in beams if first[tuple(b.steps)] is b]


def beam_search(problems: list[SearchProblem], policy: Policy, score: ScoreFn, cfg: SearchSettings
                ) -> list[SearchOutcome]:
    """search-and-learn's beam search (docs/method.md): every iteration exactly n beams sample one step
    each (the survivors repeated in turn to fill n slots); finished beams leave the pool; the top n/M
    unfinished (optionally de-duplicated) survive. Returns the first n to finish (or the n best, with
    sort_completed), repeated in turn if fewer finished; without sort_completed it stops at n finished."""
    keep = max(cfg.n // min(cfg.beam_width, cfg.n), 1)
    costs = [SearchCompute() for _ in problems]
    scorer = CountingScorer(score, costs, cfg.scorer_passes)
    active = [[_Beam([], ids=p.prompt_ids)] for p in problems]   # the root: its n copies give the first n beams
    done: list[list[_Beam]] = [[] for _ in problems]
    traces: list[list[dict]] = [[] for _ in problems]
    for it in range(cfg.max_iterations):
        live = [p for p in range(len(problems)) if active[p]]
        if not live:
            break
        children = _expand(problems, policy, scorer, costs, [_refill(a, cfg.n) for a in active], 1,
                           it == cfg.max_iterations - 1, cfg.fallback_last_number)
        for p in live:
            finished = [c for c in children[p] if c.finished]
            done[p].extend(finished)
            unfinished = [c for c in children[p] if not c.finished]
            if cfg.filter_duplicates:
                unfinished = _unique_steps(unfinished)
            top = {id(b) for b in _rank(unfinished, cfg.spec)[:keep]}
            survivors = [b for b in unfinished if id(b) in top]   # generation order, as they are refilled
            active[p] = [] if len(done[p]) >= cfg.n and not cfg.sort_completed else survivors
            traces[p].append({"iteration": it, "expanded": len(children[p]), "finished": len(finished),
                              "kept": len(active[p])})
    results = []
    for d, c, t in zip(done, costs, traces):
        chosen = (_rank(d, cfg.spec) if cfg.sort_completed else d)[:cfg.n]
        results.append(SearchOutcome([b.solution for b in _refill(chosen, cfg.n)], c, t))
    return results


def dvts(problems: list[SearchProblem], policy: Policy, score: ScoreFn, cfg: SearchSettings
         ) -> list[SearchOutcome]:
    """Diverse verifier tree search (search-and-learn): n/M independent subtrees per problem, each
    continuing from the best of M candidate next steps; a subtree's last M candidates are its results
    (n per problem, all voted on). Subtrees share nothing but the batched policy/PRM calls."""
    m = min(cfg.beam_width, cfg.n)
    n_subtrees = max(cfg.n // m, 1)
    costs = [SearchCompute() for _ in problems]
    # Flatten (problem, subtree) into units so the batched expansion keeps them apart.
    units = [(p, t) for p in range(len(problems)) for t in range(n_subtrees)]
    heads = [_Beam([], ids=problems[p].prompt_ids) for p, _ in units]
    last: list[list[_Beam]] = [[] for _ in units]      # each unit's latest M candidates
    traces: list[list[dict]] = [[] for _ in problems]
    for it in range(cfg.max_iterations):
        live = [u for u, h in enumerate(heads) if not h.finished]
        if not live:
            break
        unit_problems = [problems[units[u][0]] for u in live]
        unit_costs = [SearchCompute() for _ in live]
        children = _expand(unit_problems, policy, CountingScorer(score, unit_costs, cfg.scorer_passes), unit_costs,
                           [[heads[u]] for u in live], m, it == cfg.max_iterations - 1,
                           cfg.fallback_last_number)
        for j, u in enumerate(live):
            last[u] = children[j]
            heads[u] = _rank(children[j], cfg.spec)[0]
            # search-and-learn also ends a subtree once its text holds a boxed answer
            heads[u].finished = heads[u].finished or "boxed{" in heads[u].solution.text
            costs[units[u][0]].add(unit_costs[j])
        for p in range(len(problems)):
            mine = [u for u in live if units[u][0] == p]
            if mine:
                traces[p].append({"iteration": it, "expanded": m * len(mine),
                                  "finished": sum(heads[u].finished for u in mine), "kept": len(mine)})
    for p in range(len(problems)):   # policy calls: the subtrees of one problem share each round
        costs[p].policy_calls = len(traces[p])
    return [SearchOutcome([c.solution for u in range(len(units)) if units[u][0] == p for c in last[u]],
                          costs[p], traces[p]) for p in range(len(problems))]


METHODS: dict[str, Callable[..., list[SearchOutcome]]] = {
    "greedy": greedy, "best_of_n": best_of_n, "beam": beam_search, "dvts": dvts}
