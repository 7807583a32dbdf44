"""chain-tiny builds that rebuild (tasks.chain.policy): pinned kernels and threads, independent seeds, and the
documented quality checked when a model is built and when it is loaded."""
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tasks.chain import policy
from tasks.chain.policy import (
    PINNED_ENV,
    BuildQualityError,
    ChainModelSpec,
    ensure_chain_tiny,
    model_dir,
    sft_questions,
    weights_digest,
)

ROOT = Path(__file__).resolve().parent.parent
SMALL = ChainModelSpec(train_steps=3, batch_size=4, misconception_steps=2, sft_max_cycles=0)


def build_as_another_machine(root: Path, env: dict) -> str:
    """Build SMALL from a fresh process whose environment chose other kernels / threads; the weights' digest."""
    code = ("import json, sys; from pathlib import Path; from tasks.chain.policy import ChainModelSpec, ensure_chain_tiny;"
            "print(ensure_chain_tiny(Path(sys.argv[1]), ChainModelSpec(**json.loads(sys.argv[2])), log=lambda *_: None))")
    clean = {k: v for k, v in os.environ.items() if k not in PINNED_ENV}
    subprocess.run([sys.executable, "-c", code, str(root), json.dumps(asdict(SMALL))], env={**clean, **env}, cwd=ROOT,
                   check=True, capture_output=True)
    return weights_digest(model_dir(root))


def test_the_same_recipe_builds_the_same_weights_whatever_kernels_and_threads_the_caller_has(tmp_path):
    # measured: unpinned, the AVX512 and AVX2 kernels build different weights from this spec in 5 steps
    wide = build_as_another_machine(tmp_path / "a", {"ATEN_CPU_CAPABILITY": "avx512", "OMP_NUM_THREADS": "2"})
    narrow = build_as_another_machine(tmp_path / "b", {"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"})
    assert wide == narrow
    assert json.loads((model_dir(tmp_path / "a") / "quality.json").read_text())["weights_sha256"] == wide


@pytest.fixture
def in_process(monkeypatch):
    """Build in this process (as the pinned child does), the measured quality replaced."""
    monkeypatch.setattr(policy, "pinned", lambda: True)
    measured = {"greedy": 0.8, "calls": 0}

    def greedy_pass(path, spec):
        measured["calls"] += 1
        return measured["greedy"]
    monkeypatch.setattr(policy, "greedy_pass", greedy_pass)
    monkeypatch.setattr(policy, "is_default_recipe", lambda spec: True)
    return measured


def test_a_build_below_the_documented_quality_is_refused_and_not_installed(tmp_path, in_process):
    in_process["greedy"] = policy.DOCUMENTED_GREEDY - policy.QUALITY_TOLERANCE - 0.01
    with pytest.raises(BuildQualityError, match="below the documented"):
        ensure_chain_tiny(tmp_path, SMALL, log=lambda *_: None)
    assert not model_dir(tmp_path).exists()


def test_a_build_within_tolerance_records_its_quality(tmp_path, in_process):
    in_process["greedy"] = policy.DOCUMENTED_GREEDY - policy.QUALITY_TOLERANCE + 0.01
    out = ensure_chain_tiny(tmp_path, SMALL, log=lambda *_: None)
    record = json.loads((out / "quality.json").read_text())
    assert record["greedy_pass"] == in_process["greedy"] and record["weights_sha256"] == weights_digest(out)


def test_loading_checks_the_weights_are_the_measured_ones(tmp_path, in_process):
    out = ensure_chain_tiny(tmp_path, SMALL, log=lambda *_: None)
    calls = in_process["calls"]
    assert ensure_chain_tiny(tmp_path, SMALL, log=lambda *_: None) == out and in_process["calls"] == calls  # digest only
    weights = load_file(out / "model.safetensors")
    name = min(weights)
    weights[name] = weights[name] + 1.0           # another model file under the same build.json
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    in_process["greedy"] = 0.3
    with pytest.raises(BuildQualityError):
        ensure_chain_tiny(tmp_path, SMALL, log=lambda *_: None)
    assert in_process["calls"] == calls + 1


def test_seeds_are_independent_builds_in_their_own_dirs(tmp_path, in_process):
    a = ensure_chain_tiny(tmp_path, SMALL, log=lambda *_: None)
    b = ensure_chain_tiny(tmp_path, ChainModelSpec(**{**asdict(SMALL), "seed": 1}), log=lambda *_: None)
    assert (a.name, b.name) == ("chain-tiny", "chain-tiny-seed1")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_only_the_default_recipe_has_a_documented_quality():
    assert policy.is_default_recipe(ChainModelSpec(seed=2))
    assert not policy.is_default_recipe(SMALL)


def test_sft_questions_are_the_questions_the_build_trains_on():
    import random
    seen = sft_questions(SMALL)
    first_batch = policy._examples(random.Random("sft:0"), SMALL, 0.0)
    assert {q for q, _ in first_batch} <= seen
    assert len(seen) <= 2000 + (SMALL.train_steps + SMALL.misconception_steps) * SMALL.batch_size


def test_greedy_pass_runs_on_a_built_model(tmp_path, monkeypatch):
    """The measurement itself (the other tests replace it): a 5-step model solves next to nothing, but
    every problem is generated and checked against its answer line."""
    monkeypatch.setattr(policy, "pinned", lambda: True)
    out = ensure_chain_tiny(tmp_path, SMALL, log=lambda *_: None)
    monkeypatch.setattr(policy, "QUALITY_PROBLEMS", 8)
    score = policy.greedy_pass(out, SMALL)
    assert 0.0 <= score <= 1.0 and score * 8 == int(score * 8)


def test_sft_goes_on_in_cycles_until_the_loss_converges(monkeypatch):
    """A seed whose first 2,000-step schedule ends above sft_target_loss gets further cosine cycles at half the
    peak rate, at most sft_max_cycles; one that ends below it gets none (its model is the one-schedule model)."""
    calls = []

    def fake_sft(model, tok, spec, opt, sched, steps, rng, rate, log=print, phase=""):
        calls.append((phase, steps, [g["lr"] for g in opt.param_groups][0]))
        return losses.pop(0) if not rate else 0.0
    monkeypatch.setattr(policy, "sft", fake_sft)
    spec = ChainModelSpec(hidden=8, layers=1, heads=1, intermediate=8, train_steps=5, sft_cycle_steps=3,
                          misconception_steps=2)
    tok = policy.build_tokenizer(spec)
    losses = [0.2, 0.1, 0.02]
    policy.build_model(spec, tok, log=lambda *_: None)
    assert [(p, n) for p, n, _ in calls] == [("", 5), ("cycle 2 ", 3), ("cycle 3 ", 3), ("misconception ", 2)]
    assert calls[1][2] == pytest.approx(spec.lr / 2)
    calls.clear()
    losses = [0.5, 0.5, 0.5, 0.5]
    policy.build_model(spec, tok, log=lambda *_: None)
    assert [p for p, _, _ in calls] == ["", "cycle 2 ", "cycle 3 ", "cycle 4 ", "misconception "]
    calls.clear()
    losses = [0.01]
    policy.build_model(spec, tok, log=lambda *_: None)
    assert [p for p, _, _ in calls] == ["", "misconception "]


def test_sft_questions_cover_every_cycle_the_build_could_run():
    """A cycle continues the SFT stream, so a build that ran its extra cycles trained on questions past
    train_steps' batches: they are in the set whatever the build's losses were."""
    import random
    from dataclasses import replace
    spec = replace(SMALL, sft_max_cycles=2, sft_cycle_steps=3)
    rng = random.Random("sft:0")
    batches = [policy._examples(rng, spec, 0.0) for _ in range(spec.train_steps + 2 * 3)]
    seen = sft_questions(spec)
    assert {q for b in batches for q, _ in b} <= seen
    assert not {q for q, _ in batches[-1]} <= sft_questions(SMALL)   # without the cycles they are missed
