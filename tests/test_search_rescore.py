"""rl.search_rescore: best-of-N records re-scored by another PRM, written anew; the source is never touched."""
import json

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from core.answers import AnswerChecker
from prm.config import PRMConfig
from core.config import validate
from prm.model import EnsemblePRM
from rl.search import SearchConfig, search
from rl.search_rescore import rescore_best_of_n
from tests.test_search_compute import ForwardCount


def _cfg(out_dir):
    with initialize_config_module("configs", version_base=None):
        raw = compose("search", overrides=[
            "method=[greedy,best_of_n]", "scorer.betas=[0.0]", "policy.model=tiny-random-llama", "rollout=hf",
            "policy.dtype=fp32", "rollout.max_new_tokens=12", "prm.backbone=tiny-random-llama", "prm.dtype=fp32",
            "prm.num_heads=4", "task.limit=2", "ns=[4]", "seeds=[0]", f"trainer.out_dir={out_dir}", "plot=false"])
    return validate(OmegaConf.to_container(raw, resolve=True), SearchConfig)


def test_rescore_writes_new_records_and_leaves_the_source(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    search(_cfg(src))
    before = {p.name: p.read_bytes() for p in (src / "records").iterdir()}
    prm = EnsemblePRM(PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=4, seed=7))
    checker = AnswerChecker()
    try:
        written = rescore_best_of_n(src, dst, prm, "tiny-seed7", checker)
    finally:
        checker.close()
    assert {p.name: p.read_bytes() for p in (src / "records").iterdir()} == before
    assert sorted(p.name for p in written) == sorted(before)
    old = [json.loads(line) for line in before["best_of_n-n4-seed0.jsonl"].decode().splitlines()]
    new = [json.loads(line) for line in (dst / "records" / "best_of_n-n4-seed0.jsonl").read_text().splitlines()]
    assert [r["question"] for r in new] == [r["question"] for r in old]
    assert all(r["prm"] == "tiny-seed7" and r["stamp"] != o["stamp"] for r, o in zip(new, old))
    assert [s["text"] for r in new for s in r["solutions"]] == [s["text"] for r in old for s in r["solutions"]]
    assert [s["mean"] for r in new for s in r["solutions"]] != [s["mean"] for r in old for s in r["solutions"]]
    assert all(isinstance(row["correct"], bool) for r in new for row in r["results"])


def test_rescore_by_the_policy_confidence_under_another_aggregate(tmp_path):
    """bench/rescore_bon.py --confidence min --aggregate min: the vanilla pick is the answered sample whose
    lowest step confidence is highest (recomputed here from the stored step scores)."""
    from prm.confidence import PolicyConfidence
    from core.models import load_model

    texts = ["1 + 2 = 3\n\nThe answer is 3.", "1 + 2 = 4\n\nThe answer is 4.", "2 + 1 = 3\n\nThe answer is 3.",
             "1 + 2 = 12\n\n12 - 1 = 11\n\nThe answer is 11."]
    sols = [{"text": t, "answer": t.split()[-1].rstrip("."), "tokens": 9, "mean": [0.5], "std": [0.0]} for t in texts]
    results = [{"label": f"best_of_n/{sel}", "n": n, "answer": None, "cost": {"generated_tokens": 9 * n}}
               for n in (1, 2, 4) for sel in ("vanilla", "weighted", "majority")]
    rec = {"source": "t", "question": "What is 1 + 2?", "reference": "3", "method": "best_of_n", "n": 4,
           "betas": [0.0], "aggregate": "last", "seed": 0, "solutions": sols, "results": results, "stamp": "s"}
    (tmp_path / "src" / "records").mkdir(parents=True)
    (tmp_path / "src" / "records" / "best_of_n-n4-seed0.jsonl").write_text(json.dumps(rec) + "\n")
    model, tok = load_model("tiny-random-llama", "fp32")
    seen = ForwardCount(model.base_model)
    checker = AnswerChecker()
    try:
        rescore_best_of_n(tmp_path / "src", tmp_path / "dst", PolicyConfidence(model.eval(), tok, "min"),
                          "confidence", checker, aggregate="min")
    finally:
        checker.close()
    [new] = [json.loads(line) for line in (tmp_path / "dst" / "records" / "best_of_n-n4-seed0.jsonl").open()]
    assert new["aggregate"] == "min" and all(0 < v <= 1 for s in new["solutions"] for v in s["mean"])
    lowest = [min(s["mean"]) for s in new["solutions"]]
    assert [len(s["mean"]) for s in new["solutions"]] == [2, 2, 2, 3]
    [row] = [r for r in new["results"] if r["label"] == "best_of_n/vanilla" and r["n"] == 4]
    best = lowest.index(max(lowest))   # ties: the earliest sample
    assert row["answer"] == texts[best].split()[-1].rstrip(".")
    assert row["correct"] == (row["answer"] == "3")
    # the samples' generation as the source spent it; the scoring as this scorer ran it (4 distinct samples)
    assert row["cost"]["generated_tokens"] == 36 and row["cost"]["scorer_forward_tokens"] == seen.positions > 0


def test_reselected_chooses_from_the_stored_scores_under_another_aggregate():
    """rl.search_rescore.reselected (bench/chain_search.py reads it): no PRM, the record's own step scores.
    Stored scores: last step favours sample 1 (answer 4), min favours sample 0 (answer 3.0: correct by the
    checker, not by its text)."""
    from rl.search_rescore import reselected

    texts = ["1 + 2 = 3\n\nThe answer is 3.0.", "1 + 2 = 4\n\nThe answer is 4."]
    sols = [{"text": texts[0], "answer": "3.0", "tokens": 9, "mean": [0.8, 0.6], "std": [0.0, 0.0]},
            {"text": texts[1], "answer": "4", "tokens": 9, "mean": [0.1, 0.9], "std": [0.0, 0.0]}]
    rec = {"question": "What is 1 + 2?", "reference": "3", "method": "best_of_n", "n": 2, "betas": [0.0],
           "aggregate": "last", "solutions": sols,
           "results": [{"label": "best_of_n/vanilla", "n": 2}, {"label": "best_of_n/majority", "n": 2}]}
    checker = AnswerChecker()
    try:
        by_last = {(r["label"], r["n"]): r for r in reselected(rec, checker, "last")}
        by_min = {(r["label"], r["n"]): r for r in reselected(rec, checker, "min", ["vanilla"], [0.0])}
    finally:
        checker.close()
    assert by_last[("best_of_n/vanilla", 2)]["answer"] == "4" and not by_last[("best_of_n/vanilla", 2)]["correct"]
    assert ("best_of_n/majority", 2) in by_last   # the record's own selectors by default
    assert by_min[("best_of_n/vanilla", 2)]["answer"] == "3.0" and by_min[("best_of_n/vanilla", 2)]["correct"] is True
    assert {label for label, _ in by_min} == {"best_of_n/vanilla"}
