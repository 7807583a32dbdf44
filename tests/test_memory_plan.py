"""The memory plan (core/memory_plan.py, rl/plan.py) against hand computations from the published architectures,
its refusal message, and `python -m rl.plan`'s exit codes. CPU only, no model loaded."""
from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from core.config import validate
from core.memory_plan import BUILTIN, HEADROOM_GB, architecture
from rl.config import OnlineConfig
from rl.plan import FITS, OVER, MemoryPlanError, main, plan_for, startup_check

GB = 1e9


def online(name: str, *overrides: str) -> OnlineConfig:
    with initialize_config_module(config_module="configs", version_base=None):
        raw = compose(config_name=name, overrides=list(overrides))
    return validate(OmegaConf.to_container(raw, resolve=True), OnlineConfig)


def by_name(plan) -> dict[str, float]:
    return {item.name.split(" (")[0]: item.gb for item in plan.items}


# Qwen2.5-1.5B's config.json: 28 layers, hidden 1536, intermediate 8960, 12 heads, 2 KV heads (head 128),
# vocabulary 151936, tied embeddings, q/k/v biases.
QWEN_1_5B_LAYER = 2 * 1536 * 1536 + 2 * 1536 * 256 + (1536 + 2 * 256) + 3 * 1536 * 8960 + 2 * 1536
QWEN_1_5B = 28 * QWEN_1_5B_LAYER + 151936 * 1536 + 1536
# Qwen2.5-7B: 28 layers, hidden 3584, intermediate 18944, 28 heads, 4 KV heads (head 128), vocabulary 152064,
# untied LM head.
QWEN_7B_LAYER = 2 * 3584 * 3584 + 2 * 3584 * 512 + (3584 + 2 * 512) + 3 * 3584 * 18944 + 2 * 3584
QWEN_7B = 28 * QWEN_7B_LAYER + 2 * 152064 * 3584 + 3584


def test_parameter_counts_are_the_published_ones():
    assert BUILTIN["qwen2.5-1.5b"].params() == QWEN_1_5B == 1_543_714_304   # "1.54B" on the model card
    assert BUILTIN["qwen2.5-7b"].params() == QWEN_7B == 7_615_616_512       # "7.61B"
    assert round(BUILTIN["llama-3-8b"].params() / 1e9, 2) == 8.03


def test_plan_equals_hand_computation_1_5b_full_zero2_8_gpus():
    cfg = online("online_gpu", "policy.model=Qwen/Qwen2.5-1.5B-Instruct", "prm.backbone=Qwen/Qwen2.5-1.5B-Instruct")
    plan = plan_for(cfg, gpus=8, gpu_memory_gb=80)
    got = by_name(plan)
    tokens, positions = 8 * 1024, 8 * (512 + 1)      # algo.micro_batch_size x rollout.max_model_len; + 1 position
    heads = 32 * ((1536 + 2) * 128 + 128 + 128 * 128 + 128 + 128 + 1)   # hidden_logprob: 2 more inputs
    hand = {
        "policy weights": QWEN_1_5B * 2 / GB,                       # bf16, replicated under ZeRO-2
        "policy gradients": QWEN_1_5B * 2 / 8 / GB,                 # partitioned (ZeRO-2)
        "policy optimizer": QWEN_1_5B * 12 / 8 / GB,                # fp32 master + 2 moments, partitioned
        # checkpointing: every layer's input (h) + one layer's 4h + 2 q_dim + 2 kv_dim + 4 I elements, bf16
        "activations": tokens * 2 * (28 * 1536 + 4 * 1536 + 2 * 1536 + 2 * 256 + 4 * 8960) / GB,
        "logits": positions * 151936 * (2 + 2) / GB,               # bf16 LM head output + its gradient
        "PRM backbone": QWEN_1_5B * 2 / GB,                         # frozen, bf16
        "PRM training state": heads * 20 / GB,                      # fp32 heads: weight, anchor, grad, 2 moments
        "vLLM engine weights": QWEN_1_5B * 2 / GB,
        "vLLM KV cache": 0.35 * 80 - QWEN_1_5B * 2 / GB,            # utilisation x card, less its weights
    }
    assert got.keys() == hand.keys()
    for name, value in hand.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name
    resident = sum(hand[k] for k in ("policy weights", "policy gradients", "policy optimizer", "PRM backbone",
                                     "PRM training state"))
    assert plan.phase_gb("training") == pytest.approx(resident + hand["activations"] + hand["logits"] + HEADROOM_GB)
    assert plan.phase_gb("generation") == pytest.approx(resident + 0.35 * 80 + HEADROOM_GB)   # sleep: engine only here
    assert plan.fits and plan.advice().startswith("fits")


def test_plan_equals_hand_computation_7b_lora_fp32_one_gpu_and_refuses():
    cfg = online("online_gpu", "policy.model=Qwen/Qwen2.5-7B-Instruct", "policy.train_mode=lora", "policy.dtype=fp32",
                 "policy.gradient_checkpointing=false", "algo.kl_coef=0.05", "algo.micro_batch_size=2",
                 "rollout.sleep=false", "rollout.gpu_memory_utilization=0.3", "prm_update=none", "select.mode=none",
                 "algo.reward=outcome", "policy.zero_stage=0", "prm.zero_stage=0")
    plan = plan_for(cfg, gpus=1, gpu_memory_gb=80)
    got = by_name(plan)
    lora = 28 * 16 * ((3584 + 3584) * 2 + (3584 + 512) * 2 + (3584 + 18944) * 3)  # q,o; k,v; gate,up,down
    tokens, positions = 2 * 1024, 2 * 513
    hand = {
        "policy weights": (QWEN_7B + lora) * 4 / GB,                 # fp32 base + adapters
        "policy gradients": lora * 4 / GB,                          # adapters only
        "policy optimizer": lora * 8 / GB,                          # fp32: two moments, no master copy
        # no reference: LoRA's reference is the base with the adapter disabled; no PRM (outcome reward, frozen)
        "activations": 28 * tokens * 4 * (4 * 3584 + 2 * 3584 + 2 * 512 + 4 * 18944) / GB,   # no checkpointing
        "logits": positions * 152064 * (4 + 4) / GB,               # fp32 output + gradient
        "vLLM engine weights": QWEN_7B * 2 / GB,                    # rollout.dtype=bf16
        "vLLM KV cache": 0.3 * 80 - QWEN_7B * 2 / GB,
    }
    assert got.keys() == hand.keys()
    for name, value in hand.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name
    assert plan.phase_gb("training") == pytest.approx(sum(hand.values()) + HEADROOM_GB)   # engine awake: no sleep
    assert not plan.fits and plan.largest().name.startswith("policy weights")
    with pytest.raises(MemoryPlanError) as err:
        startup_check(cfg, gpus=1, detected_gb=80, show=False)
    message = str(err.value)
    assert "the largest item is policy weights (7.62B, fp32, lora, ZeRO-0) (30.6 GB)" in message
    assert "lower it with policy.dtype=bf16" in message and "plan.check=false" in message
    cfg.plan.check = False   # the flag that starts anyway
    assert startup_check(cfg, gpus=1, detected_gb=80, show=False).peak_gb == plan.peak_gb


def test_full_fine_tune_with_kl_holds_a_reference_replica_partitioned_under_zero3():
    cfg = online("online_gpu", "algo.kl_coef=0.1")
    got = by_name(plan_for(cfg, gpus=8, gpu_memory_gb=80))
    assert got["reference model"] == pytest.approx(QWEN_1_5B * 2 / GB, rel=1e-12)
    assert "reference model" not in by_name(plan_for(online("online_gpu"), gpus=8, gpu_memory_gb=80))
    zero3 = by_name(plan_for(online("online_gpu", "algo.kl_coef=0.1", "policy.zero_stage=3"), gpus=8, gpu_memory_gb=80))
    assert zero3["reference model"] == pytest.approx(QWEN_1_5B * 2 / 8 / GB, rel=1e-12)   # partitioned like the policy


def test_engine_without_room_for_a_kv_cache_is_named():
    cfg = online("online_gpu", "policy.model=Qwen/Qwen2.5-7B-Instruct", "rollout.gpu_memory_utilization=0.15")
    plan = plan_for(cfg, gpus=8, gpu_memory_gb=80)
    assert not plan.fits and "raise rollout.gpu_memory_utilization" in plan.advice()


def test_architecture_from_a_local_config_json_and_unknown_names(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 1536, "intermediate_size": 8960,
        "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}))
    assert architecture(str(tmp_path)) == BUILTIN["qwen2.5-1.5b"]
    with pytest.raises(ValueError, match="prm.backbone=no/such-model: no architecture"):
        architecture("no/such-model", "prm.backbone")


def test_rl_plan_command_exit_codes(capsys):
    assert main(["--config-name", "online_gpu", "policy.model=Qwen/Qwen2.5-7B-Instruct",
                 "prm.backbone=Qwen/Qwen2.5-7B-Instruct", "plan.gpus=8", "plan.gpu_memory_gb=80"]) == FITS
    out = capsys.readouterr().out
    assert "| policy optimizer (fp32 master + AdamW moments) | 11.4 |" in out and "fits: peak" in out
    assert main(["--config-name=online_gpu", "policy.model=Qwen/Qwen2.5-7B-Instruct", "plan.gpus=1",
                 "plan.gpu_memory_gb=80"]) == OVER
    assert "does not fit" in capsys.readouterr().out


def test_rl_online_refuses_a_plan_over_the_detected_card_before_any_model_loads(monkeypatch):
    """On cuda (faked: the device resolution and the card's size), build() stops at the plan: the policy
    trainer, the first thing that loads a model, is never constructed."""
    import types

    import torch

    import rl.online
    import rl.policy

    monkeypatch.setattr(rl.online, "resolve_device", lambda device: "cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=4e9))
    monkeypatch.setattr(rl.policy, "PolicyTrainer", lambda *a, **k: pytest.fail("a model loaded before the plan"))
    cfg = online("online", "trainer.out_dir=/nonexistent/never-made")
    with pytest.raises(MemoryPlanError, match="does not fit: training peak .* > 4 GB per GPU; the largest item is "
                                              "activations .*policy.gradient_checkpointing=true"):
        rl.online.build(cfg)
    cfg.plan.check = False
    rl.online.check_memory(cfg, rl.online.Ranks())   # proceeds anyway
