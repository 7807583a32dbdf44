#!/usr/bin/env bash
# GPU check for one CUDA GPU, under 10 minutes, offline: installs prmloop's dependencies (keeping the CUDA
# torch and transformers already installed; from WHEELHOUSE=dir, made by `make wheelhouse`, with pip
# --no-index, else from the network); the tiny model's tokenizer comes from bench/gpu_stub (PRMLOOP_TOKENIZER_DIR,
# SmolLM2's tokenizer alone: no GGUF package, no hub). Then, on cuda:
#   1. the memory plan of the GPU preset (rl.plan, no GPU needed), and one PPO micro-step at Qwen2.5-1.5B's
#      shape whose peak memory must be within 25 % of the plan's (bench/ppo_step_memory.py);
#   2. 2 rounds of the tiny-model online loop: HF rollout, PRM and policy on cuda:0, bf16, DeepSpeed;
#   3. the same under torchrun with one rank (the launcher path: policy.device=auto -> cuda:LOCAL_RANK);
#   4. fp32 parity: the same 2 rounds in fp32 on the CPU and on the device, equal counts and labels, losses within
#      the fp32 reduction bound (bench/gpu_check_steps.py says how it is derived);
#   5. torchrun, policy and PRM at ZeRO-2: killed (-9) in round 2, resumed, equal to the uninterrupted run on every
#      rank (2 ranks: one per GPU, or on the CPU where fewer than 2 GPUs are);
#   6. ZeRO-3 weight streaming equal to ZeRO-0 within tests/zero3_sync_probe.py's bound (2 CPU ranks, gloo);
#   7. 1 epoch of prm.train on a generated labelled JSONL pool, PRM on cuda;
# and prints PASS/FAIL per step, then writes $OUT/summary.json ({"steps": [{name, status, seconds}], "passed"}).
# Usage, from the repo root, in a Python env with a CUDA build of torch:
#   bash bench/gpu_check.sh                  # WHEELHOUSE=dir: offline install; SKIP_INSTALL=1: none
#   bash bench/gpu_check.sh --dry-run        # every step on the CPU (fp32), no install, no network (CI runs it)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--dry-run" ]; then
  export DEV=cpu SKIP_INSTALL=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1
fi
PY=${PY:-python}
OUT=${OUT:-$(mktemp -d /tmp/prmloop_gpu_check.XXXX)}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} DS_BUILD_OPS=0 PIP_DISABLE_PIP_VERSION_CHECK=1
export PRMLOOP_TOKENIZER_DIR=${PRMLOOP_TOKENIZER_DIR:-$PWD/bench/gpu_stub}
declare -a RESULTS
: > "$OUT/steps.tsv"
step() {  # step <name> <command...>: run with a 4-minute cap (CAP=seconds), record PASS/FAIL and the seconds
  local name=$1; shift
  local start=$SECONDS status=PASS
  if ! timeout "${CAP:-240}" "$@" >"$OUT/$name.log" 2>&1; then status=FAIL; tail -20 "$OUT/$name.log"; fi
  RESULTS+=("$status  $name  ($((SECONDS - start)) s$([ $status = FAIL ] && echo ", log: $OUT/$name.log"))")
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >> "$OUT/steps.tsv"
  echo "${RESULTS[-1]}"
}

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  FROM=$([ -n "${WHEELHOUSE:-}" ] && echo "--no-index --find-links ${WHEELHOUSE}" || echo "")
  step install bash -c "$PY - <<'EOF' > '$OUT/requirements.txt'
import tomllib
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']
keep = lambda d: not d.replace(' ', '').startswith(('torch', 'transformers'))   # the node's own CUDA builds
print('\n'.join(d for d in deps if keep(d)))
EOF
$PY -m pip install -q $FROM -r '$OUT/requirements.txt' pytest && $PY -m pip install -q $FROM --no-deps --no-build-isolation -e ."
fi
DEV=${DEV:-cuda}
DTYPE=$([ "$DEV" = cuda ] && echo bf16 || echo fp32)
[ "$DEV" = cuda ] && step cuda "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
step plan "$PY" -m rl.plan --config-name online_gpu plan.gpus=8 plan.gpu_memory_gb=80
# one PPO micro-step at Qwen2.5-1.5B's shape (vocabulary 151,936, 8 x 712 tokens): peak memory against the plan
# (the CPU dry run: 2 layers of width 64, the full vocabulary, a short batch; no memory comparison)
PPO_SHAPE=$([ "$DEV" = cuda ] && echo "--micro 8 --tokens 712 --completion 512" || echo "--layers 2 --hidden 64 --micro 2 --tokens 64 --completion 32")
step ppo_step_1.5b_shape "$PY" -m bench.ppo_step_memory --model qwen2.5-1.5b --device $DEV $PPO_SHAPE

TINY=(policy=tiny prm=tiny rounds=2 task.prompts_per_round=4 rollout.n=4 rollout.max_new_tokens=32
      algo.filter_groups=false select.mode=all plot=false trainer.progress=false)
ONLINE=("${TINY[@]}" policy.dtype=$DTYPE prm.dtype=$DTYPE)
step online_$DEV "$PY" -m rl.online "${ONLINE[@]}" policy.device=$DEV prm.device=$DEV \
  trainer.out_dir="$OUT/online" hydra.run.dir="$OUT/online/hydra"
step online_torchrun "$PY" -m torch.distributed.run --nproc_per_node 1 -m rl.online "${ONLINE[@]}" \
  trainer.out_dir="$OUT/online_torchrun" hydra.run.dir="$OUT/online_torchrun/hydra"
step online_metrics "$PY" - "$OUT" <<'EOF'
import json, sys
for run in ("online", "online_torchrun"):
    rounds = [r for r in map(json.loads, open(f"{sys.argv[1]}/{run}/metrics.jsonl")) if r["round"] >= 1]  # round 0: the initial policy's evaluation
    assert len(rounds) == 2 and rounds[-1]["policy_version"] == 1, rounds
    assert rounds[-1]["sync/parity_gap"] <= 0.05, rounds[-1]   # the trainer's weights are the ones sampled
print("2 rounds each; policy updated; parity ok")
EOF

# fp32 parity of the CPU and the device. The dry run compares the two CPU fp32 runs above (plain and torchrun):
# the comparison runs, the device side is the CPU.
PARITY_REF="$OUT/online_torchrun" PARITY_DEV="$OUT/online"
if [ "$DEV" = cuda ]; then
  PARITY_REF="$OUT/parity_cpu" PARITY_DEV="$OUT/parity_cuda"
  step parity_run_cpu "$PY" -m rl.online "${TINY[@]}" policy.dtype=fp32 prm.dtype=fp32 policy.device=cpu prm.device=cpu \
    trainer.out_dir="$PARITY_REF" hydra.run.dir="$PARITY_REF/hydra"
  step parity_run_cuda "$PY" -m rl.online "${TINY[@]}" policy.dtype=fp32 prm.dtype=fp32 policy.device=cuda \
    prm.device=cuda trainer.out_dir="$PARITY_DEV" hydra.run.dir="$PARITY_DEV/hydra"
fi
step parity_fp32 "$PY" -m bench.gpu_check_steps parity "$PARITY_REF" "$PARITY_DEV"

# ZeRO-2 kill + resume on 2 ranks: one per GPU where there are 2, else on the CPU (gloo)
GPUS=$([ "$DEV" = cuda ] && "$PY" -c "import torch; print(torch.cuda.device_count())" || echo 0)
RESUME_DEV=$([ "$GPUS" -ge 2 ] && echo auto || echo cpu)
RESUME_ENV=$([ "$RESUME_DEV" = cpu ] && echo "CUDA_VISIBLE_DEVICES= DS_ACCELERATOR=cpu")
CAP=480 step zero2_resume env $RESUME_ENV "$PY" -m bench.gpu_check_steps resume "$OUT/zero2" 2 "${TINY[@]}" \
  policy.dtype=fp32 prm.dtype=fp32 replay.enabled=false policy.zero_stage=2 prm.zero_stage=2 policy.device=$RESUME_DEV prm.device=$RESUME_DEV
step zero3_streaming "$PY" -m bench.gpu_check_steps zero3 "$OUT/zero3"

step prm_pool "$PY" - "$OUT/pool.jsonl" <<'EOF'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as fh:
    for i in range(48):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        wrong = i % 2
        steps = [f"{a} + {b} = {a + b + wrong}", f"The answer is {a + b + wrong}."]
        fh.write(json.dumps({"question": f"What is {a} + {b}?", "steps": steps, "first_error": 0 if wrong else -1}) + "\n")
EOF
step prm_train_$DEV "$PY" -m prm.train prm=tiny prm.device=$DEV pool=jsonl pool.path="$OUT/pool.jsonl" \
  select.mode=all epochs=1 run_eval=false trainer.progress=false trainer.out_dir="$OUT/prm" hydra.run.dir="$OUT/prm/hydra"
step prm_saved "$PY" -c "import json; s = json.load(open('$OUT/prm/summary.json')); assert s['updates'] > 0, s; print(s)"

echo; echo "prmloop GPU check ($OUT):"; printf '%s\n' "${RESULTS[@]}"
"$PY" - "$OUT" "$DEV" <<'EOF'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(f"{sys.argv[1]}/steps.tsv")]
steps = [{"name": n, "status": s, "seconds": int(t)} for n, s, t in rows]
summary = {"device": sys.argv[2], "steps": steps, "passed": all(s["status"] == "PASS" for s in steps)}
json.dump(summary, open(f"{sys.argv[1]}/summary.json", "w"), indent=1)
print(json.dumps(summary))
EOF
! printf '%s\n' "${RESULTS[@]}" | grep -q '^FAIL'
