"""Does a chain-tiny build depend on the CPU it runs on? The same small recipe (5 SFT steps) built in fresh
processes whose environment picks other kernels (ATEN_CPU_CAPABILITY: AVX512 vs AVX2) and thread counts,
once in-process as the build ran before its pins (unpinned) and once through ensure_chain_tiny (pinned):
the weights' digests side by side.

    python -m bench.chain_build_kernels
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = {"train_steps": 3, "batch_size": 4, "misconception_steps": 2}
UNPINNED = """
import hashlib, json, sys
from tasks.chain.policy import ChainModelSpec, build_model, build_tokenizer
spec = ChainModelSpec(**json.loads(sys.argv[1]))
model = build_model(spec, build_tokenizer(spec), log=lambda *_: None)
digest = hashlib.sha256()
for _, v in sorted(model.state_dict().items()):
    digest.update(v.numpy().tobytes())
print(digest.hexdigest()[:16])
"""
PINNED = """
import json, sys
from pathlib import Path
from tasks.chain.policy import ChainModelSpec, ensure_chain_tiny, weights_digest
print(weights_digest(ensure_chain_tiny(Path(sys.argv[2]), ChainModelSpec(**json.loads(sys.argv[1])), log=lambda *_: None))[:16])
"""


def run(code: str, env: dict, root: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_CBWR")}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(SPEC), root], env={**clean, **env}, cwd=ROOT,
                         check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    print("| build | kernels | threads | weights digest |\n|---|---|---|---|")
    for name, code in (("unpinned", UNPINNED), ("pinned", PINNED)):
        for cap in ("avx512", "avx2"):
            for threads in ("1", "2"):
                with tempfile.TemporaryDirectory() as root:
                    digest = run(code, {"ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": threads}, root)
                print(f"| {name} | {cap} | {threads} | {digest} |", flush=True)


if __name__ == "__main__":
    main()
