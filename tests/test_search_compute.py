"""Search compute in forward token positions (docs/search.md, Compute): what the records say the policy's and
the scorer's backbones ran equals what a hook on each backbone saw them run, for best-of-N, beam and DVTS
under the PRM (one backbone, and two), under the policy's own confidence, and charged to the right problem."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rl.search_methods import (
    Continuation,
    SearchProblem,
    SearchSettings,
    beam_search,
    best_of_n,
    dvts,
    prefix_cost,
)
from tests.test_search_command import _cfg

PROMPT = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


class ForwardCount:
    """A backbone's forward calls and the token positions they ran, seen from outside: per call, the new
    input columns whose attention mask is 1 (padding is no position; a KV cache's past is not re-run)."""

    def __init__(self, module):
        self.calls = self.positions = self.raw = 0   # raw: every input column, padding included
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        mask = kwargs.get("attention_mask")
        self.calls += 1
        self.positions += int(ids.numel() if mask is None else mask[:, -ids.shape[1]:].sum())
        self.raw += ids.numel()


def _tiny():
    from core.models import load_model

    model, tok = load_model("tiny-random-llama", "fp32")
    return model.eval(), tok


# ---------------------------------------------------------------- where the work is done
def test_hf_rollout_reports_the_positions_its_model_ran():
    """One row at a time (no row rides along finished): prefill + a decode pass per token but the last."""
    from rl.rollout import HFRollout

    model, tok = _tiny()
    seen = ForwardCount(model.base_model)
    backend = HFRollout(model, tok, batch_size=1)
    groups = backend.generate(["Say 1 + 2.", "Count: one, two"], 3, 8, stop=["\n\n"])
    groups += backend.generate([backend.prompt_ids("Hi")], 2, 5, temperature=0.0)
    reported = [c.forward_tokens for g in groups for c in g]
    assert sum(reported) == seen.positions
    assert seen.calls == sum(len(c.token_ids) for g in groups for c in g)   # 1 prefill + (T - 1) decode each


def test_hf_rollout_does_not_charge_padding():
    """Prompts of unequal length in one batch: the left padding runs, but no completion pays for it."""
    from rl.rollout import HFRollout

    model, tok = _tiny()
    prompts = ["Hi", "Say 1 + 2 and then say 3 + 4, please."]
    alone = HFRollout(model, tok, batch_size=1).generate(prompts, 1, 6, temperature=0.0)
    seen = ForwardCount(model.base_model)
    together = HFRollout(model, tok, batch_size=2).generate(prompts, 1, 6, temperature=0.0)
    assert [g[0].token_ids for g in together] == [g[0].token_ids for g in alone]   # the same work, batched
    assert [g[0].forward_tokens for g in together] == [g[0].forward_tokens for g in alone]
    assert seen.raw > sum(g[0].forward_tokens for g in together)                  # padding ran, unpaid


@pytest.mark.parametrize("features,mode,backbones", [("hidden", "frozen", 1), ("hidden_logprob", "frozen", 1),
                                                     ("hidden_policy_logprob", "frozen", 1),
                                                     ("hidden_policy_logprob", "full", 2)])
def test_prm_score_pays_for_every_backbone_it_runs(features, mode, backbones):
    """hidden_policy_logprob with a trained backbone reads the log-probs under a second, frozen one: two passes."""
    from prm.config import PRMConfig
    from prm.model import EnsemblePRM

    prm = EnsemblePRM(PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=2, batch_size=2,
                                step_features=features, train_mode=mode))
    counts = [ForwardCount(prm.body)] + ([ForwardCount(prm._reference[0].base_model)] if backbones == 2 else [])
    questions, steps = ["What is 1 + 2?"] * 3, [["1 + 2 = 3"], ["1 + 2 = 3", "The answer is 3."], ["x"] * 4]
    scores = prm.score(questions, steps)
    assert sum(s.forward_tokens for s in scores) == sum(c.positions for c in counts)
    assert all(c.positions == counts[0].positions > 0 for c in counts)       # each backbone ran everything
    assert [s.forward_tokens for s in scores] == [backbones * len(prm.encode(q, st)[0]) for q, st in zip(questions, steps)]


def test_prefix_cached_scorer_reports_only_the_new_tokens_it_ran():
    from prm.config import PRMConfig
    from prm.model import EnsemblePRM
    from prm.prefix_cache import PrefixCachedScorer

    prm = EnsemblePRM(PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=2))
    seen = ForwardCount(prm.body)
    scorer = PrefixCachedScorer(prm, batch_size=2)
    reported = 0
    for steps in ([["1 + 2 = 3"], ["2 + 2 = 4"]], [["1 + 2 = 3", "3 * 3 = 9"], ["2 + 2 = 4", "4 - 1 = 3"], ["new"]]):
        reported += sum(s.forward_tokens for s in scorer(["What is 1 + 2?"] * len(steps), steps))
    assert reported == seen.positions == scorer.tokens_run and scorer.tokens_reused > 0


def test_confidence_scorer_reports_its_own_read_of_the_steps():
    from prm.confidence import PolicyConfidence

    model, tok = _tiny()
    seen = ForwardCount(model.base_model)
    scorer = PolicyConfidence(model, tok, "min", batch_size=2)
    scores = scorer.score(["What is 1 + 2?"] * 3, [["1 + 2 = 3"], ["1 + 2 = 4", "The answer is 4."], ["x", "y"]])
    assert sum(s.forward_tokens for s in scores) == seen.positions > 0 and seen.calls == 2


# ---------------------------------------------------------------- charged to the problem that caused it
class Samples:
    """Full solutions: sample i costs the policy 100 + i positions; samples 0 and 2 are the same text."""

    def __call__(self, contexts, n, one_step, greedy=False):
        texts = ["1 + 1 = 2\n\nThe answer is 2.", "1 + 1 = 3\n\nThe answer is 3."]
        return [[Continuation(texts[i % 2] if i != 3 else "x", 10, forward_tokens=100 + i) for i in range(n)]
                for _ in contexts]


def scorer_of_length(questions, steps_list):
    """Scores a sequence at 7 positions per character of its steps, as a backbone would report them."""
    return [SimpleNamespace(mean=[0.5] * len(s), std=[0.0] * len(s), forward_tokens=7 * len("".join(s)))
            for s in steps_list]


def test_best_of_n_charges_each_problem_and_each_prefix_its_own_positions():
    problems = [SearchProblem("Q1", PROMPT), SearchProblem("Q2", PROMPT)]
    out = best_of_n(problems, Samples(), scorer_of_length, SearchSettings(n=4))
    distinct = 7 * (len("1 + 1 = 2The answer is 2.") + len("1 + 1 = 3The answer is 3.") + len("x"))
    for o in out:   # the repeated sample is scored once, by the first problem that owns it: its own
        assert (o.cost.policy_forward_tokens, o.cost.scorer_forward_tokens) == (100 + 101 + 102 + 103, distinct)
        first2 = prefix_cost(o.solutions[:2])
        assert (first2.policy_forward_tokens, first2.scorer_forward_tokens) == (201, 7 * 50)
        assert prefix_cost(o.solutions) == o.cost


@pytest.mark.parametrize("method,settings,width", [
    (beam_search, SearchSettings(n=2, beam_width=2, max_iterations=2), 2),   # n beams a round
    (dvts, SearchSettings(n=4, beam_width=2, max_iterations=2), 4)])         # 2 subtrees x M candidates
def test_step_wise_search_charges_each_problem_its_continuations_and_passes(method, settings, width):
    class Steps:
        def __call__(self, contexts, n, one_step, greedy=False):
            return [[Continuation(f"step {len(c)}", 3, step_end=one_step, forward_tokens=len(c)) for _ in range(n)]
                    for c in contexts]

    problems = [SearchProblem("Q1", PROMPT), SearchProblem("Q2", PROMPT + "longer prompt ")]
    out = method(problems, Steps(), scorer_of_length, settings)
    for p, o in zip(problems, out):   # every continuation of a round extends the same context
        first = len(p.prompt)
        second = len(p.prompt + f"step {first}\n\n")
        assert o.cost.policy_forward_tokens == width * (first + second)
        # a round's children are one sequence: scored once, by the problem's first beam or subtree
        assert o.cost.scorer_forward_tokens == 7 * (len(f"step {first}") * 2 + len(f"step {second}"))


# ---------------------------------------------------------------- the records of rl.search
def _counted_search(tmp_path, monkeypatch, *overrides) -> dict:
    """rl.search with a hook on every backbone it loads; the positions each run (method, n, beta) made them run."""
    import rl.search as search_mod
    from prm.model import EnsemblePRM

    hooks: dict[str, list[ForwardCount]] = {"policy": [], "scorer": []}
    real_backend, real_scorer, real_once = search_mod.make_backend, search_mod.load_scorer, search_mod.search_once

    def make_backend(*args):
        backend, tok = real_backend(*args)
        hooks["policy"].append(ForwardCount(backend.model.base_model))
        return backend, tok

    def load_scorer(cfg, task):
        scorer = real_scorer(cfg, task)
        if isinstance(scorer, EnsemblePRM):
            bodies = [scorer.body] + [r.base_model for r in scorer._reference if r is not None]
        else:
            bodies = [scorer.model.base_model]
        hooks["scorer"] += [ForwardCount(b) for b in bodies]
        return scorer

    runs = {}

    def search_once(run, method, mcfg, n, spec, step_wise):
        before = {k: sum(h.positions for h in hs) for k, hs in hooks.items()}
        out = real_once(run, method, mcfg, n, spec, step_wise)
        runs[(method, n, spec.beta)] = {k: sum(h.positions for h in hs) - before[k] for k, hs in hooks.items()}
        return out

    monkeypatch.setattr(search_mod, "make_backend", make_backend)
    monkeypatch.setattr(search_mod, "load_scorer", load_scorer)
    monkeypatch.setattr(search_mod, "search_once", search_once)
    # one row per generate batch: a finished row never rides along, so the hook sees exactly the rows' positions
    search_mod.search(_cfg(tmp_path, "rollout.batch_size=1", "scorer.betas=[0.0]", "plot=false", *overrides))
    return {"runs": runs, "backbones": len(hooks["scorer"])}


@pytest.mark.parametrize("scorer,backbones", [
    (["scorer.source=prm"], 1),                                                  # beam/DVTS: the prefix cache
    (["prm.step_features=hidden_policy_logprob", "prm.train_mode=full"], 2),      # a second, frozen backbone
    (["scorer.source=confidence_min", "scorer.aggregate=min"], 1)])               # the policy re-reading its steps
def test_records_hold_the_positions_each_backbone_ran(tmp_path, monkeypatch, scorer, backbones):
    counted = _counted_search(tmp_path, monkeypatch, *scorer)
    assert counted["backbones"] == backbones
    assert set(counted["runs"]) == {("greedy", 1, 0.0), ("best_of_n", 4, 0.0), ("beam", 4, 0.0), ("dvts", 4, 0.0)}
    for (method, n, beta), ran in counted["runs"].items():
        name = f"{method}-n{n}-beta{beta:g}-seed0" if method in ("beam", "dvts") else f"{method}-n{n}-seed0"
        recs = [json.loads(line) for line in (tmp_path / "records" / f"{name}.jsonl").open()]
        recorded = {k: sum(r["cost"][f"{k}_forward_tokens"] for r in recs) for k in ("policy", "scorer")}
        assert recorded == ran, method
        assert ran["policy"] > 0 and (ran["scorer"] > 0) == (method != "greedy"), method
        for rec in recs:   # each result row at the run's n carries the run's compute
            assert all(r["cost"] == rec["cost"] for r in rec["results"] if r["n"] == n), method
    summary = (tmp_path / "summary.md").read_text()
    assert "| policy forward tokens / problem | scorer forward tokens / problem |" in summary


def test_summary_gives_the_mean_positions_and_a_dash_where_records_lack_them(tmp_path):
    from rl.search_report import write_report

    def record(label, seed, cost):
        return json.dumps({"seed": seed, "source": "t", "results": [
            {"label": label, "n": 4, "correct": True, "cost": {"generated_tokens": 40, **cost}}]}) + "\n"
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "best_of_n-n4-seed0.jsonl").write_text(
        record("best_of_n/vanilla", 0, {"policy_forward_tokens": 900, "scorer_forward_tokens": 300})
        + record("best_of_n/vanilla", 0, {"policy_forward_tokens": 1100, "scorer_forward_tokens": 500}))
    (tmp_path / "records" / "beam-n4-beta0-seed0.jsonl").write_text(record("beam/vanilla", 0, {}))   # written before
    lines = write_report(tmp_path, plot=False).read_text().splitlines()
    assert next(x for x in lines if x.startswith("| best_of_n/vanilla |")).endswith("| 1000 | 400 |")
    assert next(x for x in lines if x.startswith("| beam/vanilla |")).endswith("| - | - |")
