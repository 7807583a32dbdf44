"""A claim's problem sets, drawn from its generator seed ranges, and the check that its test set is fresh.

    problem_set(s)            the set's problems: chain_problems(seed, per_seed) for each seed in [first, last),
                              duplicates dropped (first one kept)
    assert_disjoint(test, others)   fails naming the first test question found in another set, and that set
    claim_problem_sets(claim) every set of a claim, its test set fresh: its generator seeds outside every
                              range the repository's benchmarks and configs use (RESERVED), and no question
                              of it in the claim's other sets, in RESERVED's problems, or in what any policy
                              build of the claim trained on
    claim_problem_sets(claim, chain_spec, build_spec)   the same for a claim on a testbed task: every set
                              drawn with that task's ChainSpec, RESERVED's problems drawn with both the default
                              spec and that one (online runs on the task drew theirs with it), the builds'
                              SFT questions those of `build_spec` (a testbed policy spec class, tasks.chain.policy)

Disjoint seed ranges do not make disjoint questions: 3-operation chains are few enough that SFT's ~40,000
draws contain 4 of generator seed 202's first 200 problems. So a test question found in any other set is
dropped (the set counts them), and assert_disjoint then checks the result: the guard a later edit cannot
skip.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from bench.claims.spec import Claim, ProblemSet, Role

# Generator seed ranges [first, last) already used by the repository's benchmarks, configs and tuning:
# never a claim's test set.
# (first, last, problems per seed drawn there; the question check uses the seeds up to `checked` of each).
RESERVED = {
    "online runs' training problems (task.seed = trainer seed)": (0, 100, 2000),
    "bench_chain_pool pool": (101, 102, 400),
    "bench_chain_pool held-out (tuning of the PRM variants)": (202, 203, 120),
    "bench_search chain problems (the misconception's diagnosis)": (303, 304, 60),
    "chain_rl_peer held-out": (999, 1000, 128),
    "chain_rl_peer training problems": (1000, 1100, 4000),
    "online PRM held-out judged set (task.seed + 10_007)": (10_007, 10_107, 64),
    "online policy evaluation (task.seed + 20_011)": (20_011, 20_111, 64),
}
CHECKED_SEEDS = 5   # the benchmarks ran seeds 0-4 of each per-seed range


class OverlapError(ValueError):
    pass


@dataclass
class DrawnSet:
    spec: ProblemSet
    problems: list = field(default_factory=list)
    dropped: int = 0               # test questions found in another set, left out


def problem_set(s: ProblemSet, chain_spec=None) -> list:
    from tasks.chain.problems import ChainSpec, chain_problems

    spec = chain_spec or ChainSpec()
    seen, out = set(), []
    for seed in range(*s.generator_seeds):
        for p in chain_problems(seed, s.per_seed, spec):
            if p.question not in seen:
                seen.add(p.question)
                out.append(p)
    return out


def assert_disjoint(test: list, others: dict[str, list]) -> None:
    """Raise OverlapError naming the first test question that appears in one of `others` (name -> problems)."""
    for name, problems in others.items():
        questions = {getattr(p, "question", p) for p in problems}
        for p in test:
            q = getattr(p, "question", p)
            if q in questions:
                raise OverlapError(f"test question {q!r} also appears in {name}")


def check_seed_ranges(claim: Claim) -> None:
    """The test set's generator seeds intersect no reserved range."""
    first, last = claim.test_set.generator_seeds
    for name, (a, b, _) in RESERVED.items():
        if first < b and a < last:
            raise OverlapError(f"{claim.path}: test set {claim.test_set.name!r} generator seeds [{first}, {last}) "
                               f"overlap [{a}, {b}) ({name})")


@lru_cache(maxsize=8)
def trained_questions(build_seed: int, build_spec: type | None = None) -> frozenset[str]:
    """The SFT questions of build `build_seed` of `build_spec` (a ChainModelSpec class; None: the default)."""
    from tasks.chain.policy import ChainModelSpec, sft_questions
    return frozenset(sft_questions((build_spec or ChainModelSpec)(seed=build_seed)))


def reserved_questions(chain_spec=None) -> dict[str, frozenset[str]]:
    """RESERVED's problems (their first CHECKED_SEEDS seeds) drawn with `chain_spec` (None: the default)."""
    from dataclasses import astuple
    return _reserved(astuple(chain_spec) if chain_spec is not None else None)


@lru_cache(maxsize=4)
def _reserved(spec_fields: tuple | None) -> dict[str, frozenset[str]]:
    from tasks.chain.problems import ChainSpec
    spec = ChainSpec(*spec_fields) if spec_fields else None
    out = {}
    for name, (a, b, size) in RESERVED.items():
        seeds = (a, min(b, a + CHECKED_SEEDS))
        out[name] = frozenset(p.question for p in problem_set(ProblemSet(name, Role.pool, seeds, size), spec))
    return out


def claim_problem_sets(claim: Claim, check_builds: bool = True, chain_spec=None,
                       build_spec: type | None = None) -> dict[str, DrawnSet]:
    """Every problem set of `claim`, the test set made fresh and checked (`check_builds`: also against the
    policy builds' SFT questions; off only in unit tests, where replaying SFT streams is the slow part).
    `chain_spec`: the task's ChainSpec every set is drawn with (None: the default chain task's);
    `build_spec`: the ChainModelSpec class of the claim's builds (None: the default recipe)."""
    check_seed_ranges(claim)
    drawn = {s.name: DrawnSet(s, problem_set(s, chain_spec)) for s in claim.problem_sets}
    test = drawn[claim.test_set.name]
    others = {f"problem set {name!r} ({d.spec.role})": frozenset(p.question for p in d.problems)
              for name, d in drawn.items() if d.spec.role != Role.test}
    specs = {"": None} if chain_spec is None else {"": None, " (the task's spec)": chain_spec}
    for label, spec in specs.items():
        others.update({f"reserved set: {name}{label}": qs for name, qs in reserved_questions(spec).items()})
    if check_builds:
        others.update({f"policy build seed {b}'s SFT data": trained_questions(b, build_spec) for b in claim.builds})
    kept = [p for p in test.problems if not any(p.question in qs for qs in others.values())]
    test.dropped, test.problems = len(test.problems) - len(kept), kept
    assert_disjoint(test.problems, others)
    return drawn


def overlap_report(build_seed: int = 0) -> str:
    """How many questions of each reserved set and of each claim's drawn test set a policy build trained
    on or another set holds: why test sets are checked by question, not by seed range."""
    from bench.claims.run import RUNNERS   # each claim's sets as its runner draws them (a testbed task's spec)
    from bench.claims.spec import claim_files, load_claim
    trained = trained_questions(build_seed)
    lines = [f"| set | questions | in build {build_seed}'s SFT data |", "|---|---|---|"]
    for name, questions in reserved_questions().items():
        lines.append(f"| reserved: {name} | {len(questions)} | {len(questions & trained)} |")
    lines += ["", "| claim test set | drawn | dropped (seen elsewhere) | kept |", "|---|---|---|---|"]
    for path in claim_files():
        claim = load_claim(path)
        draw = RUNNERS[claim.id].sets if claim.id in RUNNERS else claim_problem_sets
        test = draw(claim)[claim.test_set.name]
        lines.append(f"| ({claim.id}) generator seeds {list(claim.test_set.generator_seeds)} x {claim.test_set.per_seed} "
                     f"| {len(test.problems) + test.dropped} | {test.dropped} | {len(test.problems)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(overlap_report())
