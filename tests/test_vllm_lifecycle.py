"""The vLLM engine's memory lifecycle and weight-sync context, on a fake `vllm` package (call order only:
no engine, no GPU). The engine sleeps as soon as rl.online has built it, before the PRM loads; every wake
comes after empty_cache(); the KV cache is asleep again after a sync's parity check; each reload phase runs
under the worker's vLLM config."""
from __future__ import annotations

import contextlib
import sys
import types
from types import SimpleNamespace

import pytest
import torch

import rl.vllm_rollout
from rl.vllm_rollout import VLLMRollout


class InprocClient:   # the engine in this process (VLLMRollout.in_process)
    pass


@pytest.fixture
def fake_vllm(monkeypatch):
    """sys.modules['vllm', ...] replaced by fakes that append to one event log."""
    events: list[str] = []

    class LLM:
        def __init__(self, **kwargs):
            events.append("engine built")
            self.kwargs = kwargs
            self.llm_engine = SimpleNamespace(engine_core=InprocClient())
            self.worker = SimpleNamespace(model_runner=SimpleNamespace(
                model=SimpleNamespace(load_weights=lambda weights: events.append("load_weights") or None),
                vllm_config=SimpleNamespace(model_config="model config")))

        def sleep(self, level):
            events.append(f"sleep level {level}")

        def wake_up(self, tags):
            events.append(f"wake {'+'.join(tags)}")

        def generate(self, prompts, params, use_tqdm=False):
            events.append("generate")
            ids = list(prompts[0]["prompt_token_ids"])
            return [SimpleNamespace(prompt_logprobs=[None] + [{t: SimpleNamespace(logprob=-1.0)} for t in ids[1:]],
                                    outputs=[])]

        def collective_rpc(self, fn, args=()):
            return [fn(self.worker, *args)]

        def reset_prefix_cache(self):
            events.append("reset prefix cache")

    @contextlib.contextmanager
    def set_current_vllm_config(config):
        events.append("config on")
        yield
        events.append("config off")

    modules = {
        "vllm": types.ModuleType("vllm"), "vllm.inputs": types.ModuleType("vllm.inputs"),
        "vllm.config": types.ModuleType("vllm.config"),
        "vllm.model_executor": types.ModuleType("vllm.model_executor"),
        "vllm.model_executor.model_loader": types.ModuleType("vllm.model_executor.model_loader"),
        "vllm.model_executor.model_loader.reload": types.ModuleType("vllm.model_executor.model_loader.reload"),
    }
    modules["vllm"].LLM = LLM
    modules["vllm"].SamplingParams = lambda **kw: SimpleNamespace(**kw)
    modules["vllm.inputs"].TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    modules["vllm.config"].set_current_vllm_config = set_current_vllm_config
    reload = modules["vllm.model_executor.model_loader.reload"]
    reload.initialize_layerwise_reload = lambda model: events.append("reload begin")
    reload.finalize_layerwise_reload = lambda model, config: events.append(f"reload end ({config})")
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(rl.vllm_rollout, "release_cuda_cache", lambda: events.append("empty_cache"))
    return events


class Tok:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 50 for c in text]}


def test_every_wake_follows_empty_cache_and_sync_runs_in_the_worker_context(fake_vllm):
    engine = VLLMRollout("model-dir", Tok(), sleep=True)
    engine.sleep()
    engine.sync_weights(iter([("w", torch.ones(2))]), version=1)
    engine.engine_logprobs([1, 2], [3, 4])
    assert fake_vllm == ["engine built", "sleep level 1",
                         "empty_cache", "wake weights",
                         "config on", "reload begin", "config off",
                         "config on", "load_weights", "config off",
                         "config on", "reload end (model config)", "config off", "reset prefix cache",
                         "empty_cache", "wake kv_cache", "generate"]


def test_engine_sleeps_before_the_prm_loads_and_after_the_parity_check(fake_vllm, monkeypatch, tmp_path):
    """rl.online.build: engine built -> asleep -> PRM loaded; a round's sync: weights awake for the reload, the
    KV cache for the parity check, then asleep again."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import prm.model
    import rl.engines
    import rl.online
    from core.config import validate
    from rl.config import OnlineConfig

    real_from_config = prm.model.EnsemblePRM.from_config
    monkeypatch.setattr(prm.model.EnsemblePRM, "from_config",
                        classmethod(lambda cls, cfg: fake_vllm.append("PRM loaded") or real_from_config(cfg)))
    monkeypatch.setattr(rl.engines, "rollout_from_config",
                        lambda r, policy, model, tok, seed, colocate: VLLMRollout("model-dir", tok, sleep=r.sleep))
    with initialize_config_module(config_module="configs", version_base=None):
        raw = compose(config_name="online", overrides=[
            "policy=tiny", "prm=tiny", "rollout=vllm", "rollout.sleep=true", "trainer.deepspeed=false",
            "replay.enabled=false", "plot=false", f"trainer.out_dir={tmp_path}"])
    cfg = validate(OmegaConf.to_container(raw, resolve=True), OnlineConfig)
    loop, _ = rl.online.build(cfg)
    assert fake_vllm == ["engine built", "sleep level 1", "PRM loaded"]

    fake_vllm.clear()
    loop.policy.version = 1   # as after an update: sync, then the parity check
    monkeypatch.setattr(loop.rollout, "parity_check",
                        lambda *a: (loop.rollout.engine_logprobs("p", [1]), 0.0)[1])
    monkeypatch.setattr(loop.policy, "weights_for_sync", lambda: iter([("w", torch.ones(1))]))
    loop.sync()
    assert fake_vllm[:2] == ["empty_cache", "wake weights"]
    assert fake_vllm[-4:] == ["empty_cache", "wake kv_cache", "generate", "sleep level 1"]
    loop.checker.close()
