"""rl.search_rescore: best-of-N records re-scored by another PRM, written anew; the source is never touched."""
import json

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from prm.answers import AnswerChecker
from prm.config import PRMConfig, validate
from prm.model import EnsemblePRM
from rl.search import SearchConfig, search
from rl.search_rescore import rescore_best_of_n


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
