"""Peer: TRL's PRMTrainer (trl.experimental.prm, trl==1.13.0) vs prmloop's trainer, same backbone and data.

Same SmolLM2-135M-Instruct weights (~/.cache/prmloop/models/smollm2-135m-instruct), the same first
--n trajectories of outputs/bench_prm/pool.jsonl (PRM800K, <= 384 tokens), 1 epoch, batch 4, fp32,
max length 384; then both score the same ProcessBench gsm8k items (evenly spaced) and F1 is computed
by the same judges.metrics.processbench_f1 at tau = 0.5.

  TRL   runs in its own venv (.venv-trl: torch 2.13.0 cpu, trl 1.13.0, transformers 5.19) via a
        driver written to a temp file: AutoModelForTokenClassification(num_labels=2), TRL's format
        (prompt / completions / labels: bool per step, steps cut after the first error), TRL defaults
        otherwise (lr 1e-5 linear, step_separator "\\n", raw prompt, every step labelled). Step score
        = softmax(logits)[1] at the separator token after each step, exactly as TRL tokenizes.
  ours  prm.train.train_on_pool() in `full` mode (configs/prm/smollm2_full.yaml values: lr 1e-5, head_lr 1e-3,
        pos_weight 0.25, K = 32), select.mode=all, epochs=1, DeepSpeed ZeRO-0 (the CLI default), then
        EnsemblePRM.score on the same items.
--layouts runs one process of ours per prm.batch_layout (padded | bucketed | packed).
All processes run AT THE SAME TIME, one thread each, so the shared machine's load hits both alike.
Throughput = trajectories / training-loop seconds (TRL: its train_runtime; ours: the summed PRMLearner.update
time; train()'s whole wall, with DeepSpeed set-up and the final checkpoint and model writes, is printed beside).

    python -m bench.bench_trl_peer --n 64 --eval-limit 40
    python -m bench.bench_trl_peer --n 64 --eval-limit 0 --layouts padded,bucketed
    python -m bench.bench_trl_peer --n 32 --eval-limit 0 --layouts bucketed,bucketed+nosys          # same tokens as TRL

Padding fraction = pad tokens / token slots the backbone computes, over the batches each side trained on
(TRL: counted in its collator during training; ours: prm.batching on the same stream of batches).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRL_DRIVER = r'''
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from datasets import Dataset
from transformers import AutoModelForTokenClassification, AutoTokenizer
from trl.experimental.prm import PRMConfig, PRMTrainer
model_dir, data_path, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
data = json.loads(open(data_path).read())
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=2, dtype=torch.float32)
if tok.pad_token_id is None:
    tok.pad_token = tok.eos_token
model.config.pad_token_id = tok.pad_token_id
ds = Dataset.from_list(data["train"])
args = PRMConfig(output_dir=data["out_dir"], per_device_train_batch_size=4, num_train_epochs=1, max_length=384,
                 bf16=False, fp16=False, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                 dataloader_num_workers=0, seed=0)
trainer = PRMTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
seen = {"real": 0, "total": 0}
collate = trainer.data_collator
def counting_collator(features):  # the padding of the batches TRL actually trains on
    batch = collate(features)
    seen["real"] += int(batch["attention_mask"].sum())
    seen["total"] += batch["attention_mask"].numel()
    return batch
trainer.data_collator = counting_collator
t0 = time.perf_counter()
res = trainer.train()
train_wall = time.perf_counter() - t0
n_tokens = sum(len(r["input_ids"]) for r in trainer.train_dataset)
# score: tokenize exactly as PRMTrainer.tokenize_row does, read P(label 1) at each step's last token
model.eval()
sep = tok.encode(args.step_separator, add_special_tokens=False)
scores = []
with torch.no_grad():
    for item in data["eval"]:
        ids = tok(item["prompt"], add_special_tokens=False)["input_ids"]
        if tok.bos_token_id is not None:
            ids = [tok.bos_token_id] + ids
        ends = []
        for step in item["completions"]:
            ids = ids + tok(step, add_special_tokens=False)["input_ids"] + sep
            ends.append(len(ids) - 1)
        logits = model(input_ids=torch.tensor([ids])).logits[0]
        p = torch.softmax(logits.float(), -1)[:, 1]
        scores.append([float(p[e]) for e in ends])
json.dump({"train_runtime": res.metrics["train_runtime"], "train_wall": train_wall, "steps": res.global_step,
           "train_loss": res.metrics.get("train_loss"), "train_tokens": n_tokens,
           "pad_fraction": 1 - seen["real"] / max(seen["total"], 1), "real_tokens": seen["real"],
           "scores": scores, "log": trainer.state.log_history}, open(out_path, "w"))
'''


def trl_format(t) -> dict:
    k = len(t.steps) if t.first_error == -1 else t.first_error + 1
    return {"prompt": t.question, "completions": t.steps[:k],
            "labels": [True] * (k if t.first_error == -1 else k - 1) + ([] if t.first_error == -1 else [False])}


def ours(args, out: Path) -> None:
    """Child (main venv): prm.train full mode on the same slice, then score the eval items."""
    import torch
    torch.set_num_threads(args.threads)
    from core.config import TrainerConfig
    from prm.config import (
        EvalConfig,
        PoolConfig,
        PoolSelectConfig,
        PRMConfig,
        PRMTrainConfig,
        SelectMode,
    )
    from prm.eval import load_processbench_sample
    from prm.train import train_on_pool
    pool = load_slice(args)
    name = args.layout                             # "bucketed" or "bucketed+nosys" (prm.system_prompt="")
    layout, _, variant = name.partition("+")
    pc = PRMConfig(system_prompt="" if variant == "nosys" else None,
                   backbone="smollm2-135m-instruct", dtype="fp32", num_heads=32, train_mode=args.mode,
                   max_length=384, lr=1e-5 if args.mode == "full" else 1e-4, head_lr=1e-3, batch_size=4,
                   pos_weight=0.25, batch_layout=layout)
    run_dir = out / f"ours_{name}_run"
    shutil.rmtree(run_dir, ignore_errors=True)   # metrics.jsonl appends: start clean
    cfg = PRMTrainConfig(prm=pc, pool=PoolConfig(), judge="oracle", select=PoolSelectConfig(SelectMode.all), epochs=1,
                         run_eval=False, trainer=TrainerConfig(out_dir=str(run_dir), resume="never", save_every=10 ** 9,
                                               progress=False), eval=EvalConfig(subsets=[]))
    from prm.model import EnsemblePRM
    prm = EnsemblePRM(pc)
    t0 = time.perf_counter()
    summary = train_on_pool(cfg, pool, prm=prm)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    items = load_processbench_sample("gsm8k", args.eval_limit) if args.eval_limit else []
    scores = [s.mean for s in prm.score([t.question for t in items], [t.steps for t in items], 4)]
    # the padding of the batches trained on: mode=full streams the slice in order, batch_size at a time
    from prm import batching
    enc = [prm.encode(t.question, t.steps, pc.max_length) for t in pool]
    batches = [batching.build(enc[i: i + pc.batch_size], 0, layout, pc.pack_tokens)
               for i in range(0, len(enc), pc.batch_size)]
    real, total = sum(b.real_tokens for b in batches), sum(b.total_tokens for b in batches)
    (out / f"ours_{name}.json").write_text(json.dumps({
        "train_wall": wall, "update_seconds": sum(r["seconds"] for r in rows), "steps": summary["updates"],
        "scores": scores, "loss": [r["loss"] for r in rows], "real_tokens": real, "pad_fraction": 1 - real / total,
        "pad_fraction_logged": [r["pad_fraction"] for r in rows]}))


def load_slice(args):
    """The first --n trajectories of --pool; the pool is built once when missing: PRM800K phase-1 train,
    shuffled with seed 0, trajectories of <= 384 tokens (as bench_label_efficiency's pool), cut after the
    first error when --cut-after-error (TRL's format drops those steps: both sides then see the same steps)."""
    from dataclasses import replace

    from tasks.problems import Trajectory
    path = Path(args.pool)
    if not path.is_file():
        import random

        from prm.config import PRMConfig
        from prm.data import load_prm800k
        from prm.model import EnsemblePRM
        prm = EnsemblePRM(PRMConfig(num_heads=1, train_mode="frozen"))
        pool, kept = load_prm800k("train"), []
        random.Random(0).shuffle(pool)
        for t in pool:
            if len(prm.encode(t.question, t.steps)[0]) <= 384:
                kept.append(t)
            if len(kept) >= max(args.n, 256):
                break
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(t.to_json()) + "\n" for t in kept))
    pool = [Trajectory(**json.loads(line)) for line in path.read_text().splitlines()][: args.n]
    if args.cut_after_error:
        pool = [t if t.first_error == -1 else replace(t, steps=t.steps[: t.first_error + 1]) for t in pool]
    return pool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--eval-limit", type=int, default=40, help="ProcessBench gsm8k items scored after training (0: none)")
    ap.add_argument("--pool", default="outputs/bench_prm/pool.jsonl")
    ap.add_argument("--out", default="outputs/bench_trl_peer")
    ap.add_argument("--trl-python", default=".venv-trl/bin/python")
    ap.add_argument("--model-dir", default=str(Path.home() / ".cache/prmloop/models/smollm2-135m-instruct"))
    ap.add_argument("--mode", default="full", choices=["full", "lora"])
    ap.add_argument("--layouts", default="padded,bucketed", help="our sides, one process each: prm.batch_layout, "
                    "with '+nosys' for prm.system_prompt='' (no default system turn, as TRL's raw prompt)")
    ap.add_argument("--layout", default="bucketed", help=argparse.SUPPRESS)
    ap.add_argument("--cut-after-error", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", action="store_true", help="internal: run our side")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.child:
        return ours(args, out)
    from judges.metrics import processbench_f1
    from prm.eval import load_processbench_sample, processbench_preds
    pool = load_slice(args)
    items = load_processbench_sample("gsm8k", args.eval_limit) if args.eval_limit else []
    data = {"train": [trl_format(t) for t in pool], "out_dir": str(out / "trl_run"),
            "eval": [{"prompt": t.question, "completions": t.steps} for t in items]}
    (out / "trl_data.json").write_text(json.dumps(data))
    with tempfile.NamedTemporaryFile("w", suffix="_trl_driver.py", delete=False) as fh:
        fh.write(TRL_DRIVER)
    t0 = time.perf_counter()
    layouts = args.layouts.split(",")
    child = [sys.executable, "-m", __spec__.name, "--child", "--n", str(args.n), "--eval-limit", str(args.eval_limit),
             "--pool", args.pool, "--out", args.out, "--mode", args.mode, "--threads", str(args.threads),
             "--cut-after-error" if args.cut_after_error else "--no-cut-after-error"]
    procs = {"trl": subprocess.Popen([args.trl_python, fh.name, args.model_dir, str(out / "trl_data.json"),
                                      str(out / "trl.json"), str(args.threads)])}
    for layout in layouts:  # all at the same time, one thread each: the machine's load hits every side alike
        procs[layout] = subprocess.Popen(child + ["--layout", layout])
    for name, p in procs.items():
        if p.wait():
            raise SystemExit(f"{name} failed with {p.returncode}")
    res = {"trl": json.loads((out / "trl.json").read_text())}
    res.update({layout: json.loads((out / f"ours_{layout}.json").read_text()) for layout in layouts})
    labels = [t.first_error for t in items]
    table = {}
    for name, r in res.items():
        # training-loop time: TRL's train_runtime; ours the PRMLearner.update calls (encode, collate, forward,
        # backward, step, oracle labels through the ledger), without set-up and the final checkpoint writes
        secs = r["train_runtime"] if name == "trl" else r["update_seconds"]
        f1 = processbench_f1(processbench_preds(r["scores"], 0.5), labels) if items else {}
        table[name] = {"train_seconds": secs, "steps": r["steps"], "traj_per_s": args.n / secs,
                       "process_wall": r["train_wall"],
                       "real_tokens": r["real_tokens"], "pad_fraction": r["pad_fraction"], **f1}
    ratios = {layout: table[layout]["traj_per_s"] / table["trl"]["traj_per_s"] for layout in layouts}
    result = {"n": args.n, "eval_items": len(items), "table": table, "ours_over_trl_throughput": ratios,
              "wall": time.perf_counter() - t0}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\n| trainer | training loop s ({args.n} traj, {table['trl']['steps']} steps) | traj/s | whole train() s "
          "| real tokens | pad fraction | gsm8k F1 |\n|---|---|---|---|---|---|---|")
    for name in res:
        t = table[name]
        label = "TRL 1.13 PRMTrainer" if name == "trl" else f"prmloop prm.train ({args.mode}, K=32, {name})"
        f1 = f"{t['f1']:.3f}" if "f1" in t else "-"
        print(f"| {label} | {t['train_seconds']:.1f} | {t['traj_per_s']:.4f} | {t['process_wall']:.1f} | {t['real_tokens']} | "
              f"{t['pad_fraction']:.3f} | {f1} |")
    for layout, ratio in ratios.items():
        print(f"throughput ours ({layout}) / TRL = {ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
