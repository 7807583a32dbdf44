"""The comparison steps of bench/gpu_check.sh; each exits non-zero on a mismatch.

  python -m bench.gpu_check_steps parity REF_DIR DEV_DIR
      two fp32 runs of the same 2-round tiny online config (REF on the CPU, DEV on the device): equal
      sample counts and labels, losses and rewards within the fp32 bound below.
  python -m bench.gpu_check_steps resume OUT NPROC OVERRIDES...
      under torchrun with NPROC ranks (tests/dp_probe.py): the uninterrupted run; then the same run
      killed (-9, every rank) in round 2 after round 1's checkpoint, and resumed: equal weight digests
      and losses on every rank.
  python -m bench.gpu_check_steps zero3 OUT
      tests/zero3_sync_probe.py on 2 CPU ranks: ZeRO-3's streamed weights equal the unsharded (ZeRO-0)
      trainer's within the probe's own derived bound (step_bound), full fine-tune and LoRA.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

U32 = 2.0 ** -24            # fp32 unit roundoff
VOCAB = 49152               # SmolLM2's vocabulary: the tiny model's longest reduction (the softmax normaliser)
# CPU and CUDA compute the same fp32 sums in another order (other kernels, blocking, fused reductions). A K-term
# sum then differs by at most gamma_K = K u / (1 - K u) of the sum of its absolute terms (Higham 3.1); the
# longest reduction in every compared value is the log-softmax over the vocabulary (K = 49,152; the hidden
# size is 64, the steps 32 tokens), and every compared value is a mean of O(1) terms, so each may differ by
# 2 gamma_K (one bound for the value, one for what it is compared with). Round 2 starts from weights that one
# Adam step moved; an element whose gradient is within rounding of 0 may step either way (tests/zero3_sync_probe
# .py), which this bound assumes does not flip a sampled token: the printed gaps show how close a device came.
GAMMA = VOCAB * U32 / (1 - VOCAB * U32)
TOL = 2 * GAMMA
EXACT = ("rollout/tokens", "algo/kept", "judge/labels", "select/selected", "policy_version")
CLOSE = ("reward/process", "algo/adv_abs_mean", "policy/loss", "prm/loss", "prm/acc_after")
HANG_GUARD_S = 200           # a rank that skips a collective hangs forever: each run would hit this
ROOT = Path(__file__).resolve().parent.parent


def rounds(run: Path) -> list[dict]:
    """metrics.jsonl's training rounds (round 0 is the initial policy's evaluation)."""
    return [row for row in map(json.loads, (run / "metrics.jsonl").open()) if row["round"] >= 1]


def parity(ref: Path, dev: Path) -> None:
    a, b = rounds(ref), rounds(dev)
    assert len(a) == len(b) == 2, f"expected 2 rounds each, got {len(a)} and {len(b)}"
    for x, y in zip(a, b):
        for key in EXACT:
            assert x[key] == y[key], f"round {x['round']} {key}: {x[key]} (cpu) != {y[key]} (device)"
        for key in CLOSE:
            gap = abs(x[key] - y[key])
            print(f"round {x['round']} {key}: cpu {x[key]:.9g} device {y[key]:.9g} gap {gap:.3g} (bound {TOL:.3g})")
            assert math.isclose(x[key], y[key], rel_tol=TOL, abs_tol=TOL), f"round {x['round']} {key} beyond the bound"
    print("fp32 parity: equal counts and labels, losses within the fp32 reduction bound")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(module: str, nproc: int, probe: Path, args: list[str], env: dict | None = None) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()), "-m", module, *args]
    return subprocess.Popen(cmd, cwd=ROOT, env={**base, "PROBE_DIR": str(probe), **(env or {})},
                            start_new_session=True)


def finish(proc: subprocess.Popen, what: str) -> None:
    try:
        code = proc.wait(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        kill(proc, [])
        raise SystemExit(f"{what}: no exit within {HANG_GUARD_S} s (a rank skipped a collective?)") from None
    assert code == 0, f"{what} exited with {code}"


def kill(proc: subprocess.Popen, workers: list[int]) -> None:
    """kill -9 the launcher's process group and each worker's (torchrun starts each in a session of its own)."""
    for group in [proc.pid, *workers]:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def probe_run(out: Path, nproc: int, overrides: list[str], env: dict | None = None) -> subprocess.Popen:
    args = [*overrides, "schedule=serial", f"trainer.out_dir={out}", f"trainer.local_dir={out}/local",
            f"hydra.run.dir={out}/hydra"]
    return launch("tests.dp_probe", nproc, out / "probe", args, env)


def resume(out: Path, nproc: int, overrides: list[str]) -> None:
    finish(probe_run(out / "whole", nproc, overrides), "the uninterrupted run")
    killed = out / "killed"
    proc = probe_run(killed, nproc, overrides, {"PROBE_HANG_ROUND": "2"})
    deadline = time.monotonic() + HANG_GUARD_S
    while not all((killed / "probe" / f"hung_rank{r}").exists() for r in range(nproc)):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended or stalled before round 2"
        time.sleep(0.2)
    kill(proc, [int(p.read_text()) for p in (killed / "probe").glob("pid_rank*")])
    assert (killed / "checkpoints" / "round_0001").is_dir() and not (killed / "checkpoints" / "round_0002").exists()
    finish(probe_run(killed, nproc, overrides), "the resumed run")
    for rank in range(nproc):
        a, b = (json.loads((run / "probe" / f"rank{rank}_round2.json").read_text()) for run in (out / "whole", killed))
        assert a["policy"] == b["policy"] and a["prm"] == b["prm"], f"rank {rank}: resumed weights differ"
        assert a["questions"] == b["questions"], f"rank {rank}: resumed samples differ"
        for key in ("policy/loss", "prm/loss"):
            assert a["metrics"][key] == b["metrics"][key], f"rank {rank} {key}: {a['metrics'][key]} != {b['metrics'][key]}"
    print(f"{nproc} ranks: killed in round 2 and resumed == uninterrupted (weights, samples, losses)")


def zero3(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for mode in ("full", "lora"):
        finish(launch("tests.zero3_sync_probe", 2, out, [mode], {"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}), f"zero3 {mode}")
        r0, r1 = (json.loads((out / f"zero3_{mode}_rank{r}.json").read_text()) for r in (0, 1))
        assert r0["shapes"] == r1["shapes"] == r0["expected_shapes"] and not r0["missing"], f"{mode}: partitioned tensors"
        assert r0["max_diff_over_bound"] <= 1.0, f"{mode}: ZeRO-3 step beyond the fp32 bound: {r0['max_diff_over_bound']}"
        assert r0["free_share"] < 0.01 and r0["moved"] > 1e-3, f"{mode}: the bound lost its teeth: {r0}"
        print(f"{mode}: ZeRO-3 streamed == ZeRO-0 within {r0['max_diff_over_bound']:.3g} of the bound")


def main(argv: list[str]) -> None:
    if argv[:1] == ["parity"] and len(argv) == 3:
        parity(Path(argv[1]), Path(argv[2]))
    elif argv[:1] == ["resume"] and len(argv) >= 3:
        resume(Path(argv[1]), int(argv[2]), argv[3:])
    elif argv[:1] == ["zero3"] and len(argv) == 2:
        zero3(Path(argv[1]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
