"""A claim file: Markdown for the reader, with one fenced ```yaml block that is the claim (bench/claims/README.md).

    load_claim(path) -> Claim       validates every field; a bad file fails naming the file, the 1-based
                                    line of the field (in the file, not the block) and the field
    claim_path(name)                bench/claims/<name>.md, or the file whose id is `name`
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FENCE = re.compile(r"^```yaml\s*\n(.*?)^```", re.DOTALL | re.MULTILINE)


class ClaimError(ValueError):
    pass


class Role(StrEnum):
    test = "test"               # scores the claim: fresh, disjoint from every other set
    validation = "validation"   # tunes thresholds / settings; never scores
    pool = "pool"               # the unlabelled pool the PRM's labels come from
    train = "train"             # what an online run trains on


class Metric(StrEnum):
    mean = "mean"                   # mean over problems of a per-problem value (pass, share of steps, ...)
    first_error_f1 = "first_error_f1"   # ProcessBench F1 of the rows' (label, predicted first error)
    auroc_within = "auroc_within"   # step AUROC over pairs from the same problem
    aulc_f1 = "aulc_f1"             # area under F1 vs label budget (trapezoid over the budgets), normalised
    # a mean of per-problem held-out pass beside a claim's own mean of another value: a comparison's `metric`,
    # read from the raw rows tagged with it
    held_out_pass = "held_out_pass"


@dataclass(frozen=True)
class ProblemSet:
    name: str
    role: Role
    generator_seeds: tuple[int, int]    # [first, last): the chain generator's seeds
    per_seed: int                       # problems drawn from each seed


class Quantifier(StrEnum):
    all = "all"      # every primary comparison holds
    any = "any"      # at least one does ("for at least one credit form"); Holm already corrects for the several tries


@dataclass(frozen=True)
class Comparison:
    name: str
    treatment: str
    control: str
    margin: float = 0.0                 # the claim: treatment - control > margin
    primary: bool = True                # the claim's status follows its primary comparisons
    metric: Metric | None = None      # another metric than the claim's, for this comparison only


@dataclass
class Claim:
    id: str
    title: str
    hypothesis: str
    metric: Metric
    metric_text: str
    arms: dict[str, str]
    comparisons: list[Comparison]
    seeds: list[int]
    builds: list[int]                   # policy build seeds (tasks.chain.policy.ChainModelSpec.seed)
    problem_sets: list[ProblemSet]
    table: str = "chain"                # the Holm family: every comparison of the claims of one table
    alpha: float = 0.05
    bootstrap_reps: int = 10_000
    bootstrap_seed: int = 0
    run: str = ""                       # the one command that runs it end to end
    raw: str = ""                       # raw results, repository-relative
    plot: str = ""
    path: Path = field(default=Path(), compare=False)
    holds_when: Quantifier = Quantifier.all   # all primary comparisons must hold (default), or any one of them
    waits_for: str = ""                 # what must be known before any run (the runner refuses until it is cleared)

    @property
    def expected_units(self) -> int:
        """Seed-level units the claim pre-registers: a pool x seed pair when it draws several pools (each
        pool its own replicate), else a build x seed pair. Fewer units in the raw rows: not yet decidable."""
        pools = sum(s.role == Role.pool for s in self.problem_sets)
        return len(self.seeds) * (pools if pools > 1 else len(self.builds))

    @property
    def test_set(self) -> ProblemSet:
        return next(s for s in self.problem_sets if s.role == Role.test)


REQUIRED = ("id", "title", "hypothesis", "metric", "arms", "comparisons", "seeds", "builds", "problem_sets",
            "run", "raw", "plot")


def _lines(text: str, start: int) -> dict[str, int]:
    """1-based file line of each top-level key and of `key.i.sub` items (block starting at line `start`)."""
    where, parent, index = {}, None, -1
    for offset, line in enumerate(text.splitlines()):
        number = start + offset
        top = re.match(r"^([A-Za-z_]+):", line)
        if top:
            parent, index = top.group(1), -1
            where[parent] = number
            continue
        item = re.match(r"^\s*-\s*(?:([A-Za-z_]+):)?", line)
        if item and parent:
            index += 1
            where[f"{parent}.{index}"] = number
            if item.group(1):
                where[f"{parent}.{index}.{item.group(1)}"] = number
            continue
        sub = re.match(r"^\s+([A-Za-z_]+):", line)
        if sub and parent:
            key = f"{parent}.{index}.{sub.group(1)}" if index >= 0 else f"{parent}.{sub.group(1)}"
            where[key] = number
    return where


def load_claim(path: Path | str) -> Claim:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    match = FENCE.search(text)
    if not match:
        raise ClaimError(f"{path}: no ```yaml block (the claim itself)")
    start = text[:match.start(1)].count("\n") + 1
    where = _lines(match.group(1), start)

    def fail(key: str, why: str):
        line = where.get(key) or where.get(key.split(".")[0]) or start
        raise ClaimError(f"{path}:{line}: {key}: {why}")
    try:
        raw = yaml.safe_load(match.group(1))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ClaimError(f"{path}:{start + (mark.line if mark else 0)}: not YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ClaimError(f"{path}:{start}: the yaml block must be a mapping")
    for key in REQUIRED:
        if key not in raw or raw[key] in (None, "", [], {}):
            fail(key, "missing (required: " + ", ".join(REQUIRED) + ")")
    known = set(REQUIRED) | {"table", "alpha", "bootstrap_reps", "bootstrap_seed", "metric_text", "holds_when",
                             "waits_for"}
    for key in raw:
        if key not in known:
            fail(key, f"unknown field (known: {', '.join(sorted(known))})")
    try:
        metric = Metric(raw["metric"])
    except ValueError:
        fail("metric", f"{raw['metric']!r} is not one of {[m.value for m in Metric]}")
    arms = raw["arms"]
    if not isinstance(arms, dict) or not all(isinstance(v, str) for v in arms.values()):
        fail("arms", "a mapping arm name -> what the arm runs")
    comparisons = []
    for i, c in enumerate(raw["comparisons"]):
        if not isinstance(c, dict) or {"name", "treatment", "control"} - set(c):
            fail(f"comparisons.{i}", "needs name, treatment, control (margin, primary optional)")
        extra = set(c) - {"name", "treatment", "control", "margin", "primary", "metric"}
        if extra:
            fail(f"comparisons.{i}", f"unknown field(s) {sorted(extra)}")
        for side in ("treatment", "control"):
            if c[side] not in arms:
                fail(f"comparisons.{i}.{side}", f"{c[side]!r} is not an arm ({', '.join(arms)})")
        if "metric" in c and c["metric"] not in [m.value for m in Metric]:
            fail(f"comparisons.{i}.metric", f"{c['metric']!r} is not one of {[m.value for m in Metric]}")
        comparisons.append(Comparison(str(c["name"]), c["treatment"], c["control"], float(c.get("margin", 0.0)),
                                      bool(c.get("primary", True)), Metric(c["metric"]) if "metric" in c else None))
    if len({c.name for c in comparisons}) != len(comparisons):
        fail("comparisons", "two comparisons share a name")
    for key in ("seeds", "builds"):
        values = raw[key]
        if not isinstance(values, list) or not all(isinstance(v, int) for v in values) or len(set(values)) != len(values):
            fail(key, "a list of distinct integers")
    if len(raw["seeds"]) < 2:
        fail("seeds", "at least 2 (a t-interval over seeds needs them)")
    sets = []
    for i, s in enumerate(raw["problem_sets"]):
        if not isinstance(s, dict) or {"name", "role", "generator_seeds", "per_seed"} - set(s):
            fail(f"problem_sets.{i}", "needs name, role, generator_seeds [first, last), per_seed")
        try:
            role = Role(s["role"])
        except ValueError:
            fail(f"problem_sets.{i}.role", f"{s['role']!r} is not one of {[r.value for r in Role]}")
        seeds = s["generator_seeds"]
        if not (isinstance(seeds, list) and len(seeds) == 2 and all(isinstance(x, int) for x in seeds)
                and 0 <= seeds[0] < seeds[1]):
            fail(f"problem_sets.{i}.generator_seeds", f"[first, last) with 0 <= first < last, got {seeds!r}")
        if not isinstance(s["per_seed"], int) or s["per_seed"] < 1:
            fail(f"problem_sets.{i}.per_seed", f"an integer >= 1, got {s['per_seed']!r}")
        sets.append(ProblemSet(s["name"], role, (seeds[0], seeds[1]), s["per_seed"]))
    if sum(s.role == Role.test for s in sets) != 1:
        fail("problem_sets", "exactly one set with role: test (the fresh set that scores the claim)")
    for i, a in enumerate(sets):
        for b in sets[:i]:
            if a.generator_seeds[0] < b.generator_seeds[1] and b.generator_seeds[0] < a.generator_seeds[1]:
                fail(f"problem_sets.{i}.generator_seeds", f"overlaps set {b.name!r}'s {list(b.generator_seeds)}")
    alpha = raw.get("alpha", 0.05)
    if not (isinstance(alpha, float) and 0 < alpha < 1):
        fail("alpha", f"a number in (0, 1), got {alpha!r}")
    try:
        holds_when = Quantifier(raw.get("holds_when", "all"))
    except ValueError:
        fail("holds_when", f"{raw['holds_when']!r} is not one of {[q.value for q in Quantifier]}")
    return Claim(str(raw["id"]), raw["title"], raw["hypothesis"], metric, raw.get("metric_text", metric.value),
                 dict(arms), comparisons, list(raw["seeds"]), list(raw["builds"]), sets, str(raw.get("table", "chain")),
                 alpha, int(raw.get("bootstrap_reps", 10_000)), int(raw.get("bootstrap_seed", 0)), raw["run"],
                 raw["raw"], raw["plot"], path, holds_when, str(raw.get("waits_for") or ""))


def claim_files() -> list[Path]:
    return sorted(p for p in HERE.glob("*.md") if p.name != "README.md")


def claim_path(name: str) -> Path:
    """A claim by file stem (`d_search`), path, or id (`d`)."""
    direct = Path(name)
    if direct.suffix == ".md" and direct.is_file():
        return direct
    for p in claim_files():
        if p.stem == name or load_claim(p).id == name:
            return p
    raise ClaimError(f"no claim {name!r} under {HERE.relative_to(ROOT)} "
                     f"(have: {', '.join(p.stem for p in claim_files())})")
