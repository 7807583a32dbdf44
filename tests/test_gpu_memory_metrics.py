"""gpu/mem_<phase>: each phase's peak allocated CUDA memory (GB) in the round's metrics, the largest over
ranks; nothing on CPU. CUDA's counters are faked (no GPU here); the round is the tiny model's, end to end."""
from __future__ import annotations

import torch

import rl.loop
import rl.report
from rl.online import run
from rl.report import PhaseTimer
from tests.test_rl_loop import tiny_config


def test_phase_timer_records_peaks_only_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3.5e9)
    cpu, gpu = PhaseTimer(device=torch.device("cpu")), PhaseTimer(device=torch.device("cuda:1"))
    for timer in (cpu, gpu):
        with timer("generate"):
            pass
    assert cpu.peaks == {} and "timing/generate" in cpu.seconds
    assert gpu.peaks == {"gpu/mem_generate": 3.5} and calls == [("reset", torch.device("cuda:1"))]


def test_round_metrics_carry_per_phase_peaks(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 2e9)

    class CudaTimer(rl.report.PhaseTimer):   # the timers a policy on cuda gets
        def __init__(self, on_start=None, device=None):
            super().__init__(on_start, "cuda:0")

    monkeypatch.setattr(rl.loop, "PhaseTimer", CudaTimer)
    metrics = run(tiny_config(tmp_path, rounds=1))[0]
    assert {k for k in metrics if k.startswith("gpu/")} >= {"gpu/mem_generate", "gpu/mem_score", "gpu/mem_judge",
                                                             "gpu/mem_policy_update", "gpu/mem_weight_sync"}
    assert metrics["gpu/mem_policy_update"] == 2.0


def test_reference_model_only_built_when_the_kl_term_needs_it():
    from core.config import TrainerConfig
    from rl.config import AlgoConfig, PolicyConfig
    from rl.policy import PolicyTrainer

    policy = PolicyConfig(model="tiny-random-llama", dtype="fp32", train_mode="full", device="cpu")
    trainer = TrainerConfig(deepspeed=False)
    assert PolicyTrainer(policy, AlgoConfig(kl_coef=0.0), trainer).reference is None
    assert PolicyTrainer(policy, AlgoConfig(kl_coef=0.1), trainer).reference is not None
