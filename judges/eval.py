"""Measure a judge on ProcessBench: python -m judges.eval judge=rule eval.subsets=[gsm8k,math]

Every label goes through the ledger (judge.ledger_path; null: <trainer.out_dir>/ledger.sqlite), so a
rerun (or a resumed run) pays nothing twice. Like every command (core.run): seeded from trainer.seed,
outputs under trainer.out_dir: <judge name>.json (the report), metrics.jsonl and tb/ (one step per run:
each subset's scores and the mean F1).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from judges.base import Cost, Judge
from judges.config import JudgeEvalConfig
from core.config import validate
from judges.ledger import LabelLedger
from judges.metrics import processbench_f1
from judges.session import label_counted, open_judge
from core.rows import data_root, load_processbench_rows
from core.run import MetricsLog, anchored, out_dir_lock, seed_everything

log = logging.getLogger(__name__)


def load_processbench(path: str | Path, limit: int | None = None, skip_bad_rows: bool = False) -> list[dict]:
    """ProcessBench rows (id, problem, steps, label), every one checked (a bad row names file, 1-based line
    and field), then `limit` of them evenly spaced."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no ProcessBench file at {path} (set data_root)")
    rows, _ = load_processbench_rows(path, skip_bad_rows)
    if limit is not None and limit < len(rows):
        # evenly spaced, not the first N: the files are sorted, and the first N may be all one class
        rows = [rows[i * len(rows) // limit] for i in range(limit)]
    return rows


def evaluate_subset(judge: Judge, ledger: LabelLedger, rows: list[dict], name: str,
                    chunk: int = 32) -> dict[str, Any]:
    """Scores on the labelled items; judge_seconds is wall clock (requests in flight overlap)."""
    verdicts, failed, wall_s, paid = [], 0, 0.0, Cost()
    with tqdm(total=len(rows), desc=f"{name} [{judge.identity}]", unit="item") as bar:
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            got, counts, seconds = label_counted(ledger, judge, [(r["problem"], r["steps"]) for r in part])
            verdicts += got
            failed, wall_s, paid = failed + counts.failed, wall_s + seconds, paid + counts.cost
            bar.update(len(part))
    labelled = [(v, r) for v, r in zip(verdicts, rows) if v is not None]
    scores = processbench_f1([v.first_error for v, _ in labelled], [r["label"] for _, r in labelled])
    return {**scores,
            "items": len(rows),
            "unlabelled_budget": len(rows) - len(labelled) - failed,
            "failed": failed,
            "invalid": sum(not v.valid for v, _ in labelled),
            "from_ledger": sum(v.from_ledger for v, _ in labelled),
            "paid_calls": paid.calls, "prompt_tokens": paid.prompt_tokens,
            "completion_tokens": paid.completion_tokens, "judge_seconds": round(wall_s, 3)}


def run(dcfg: DictConfig | dict) -> dict[str, Any]:
    cfg = validate(dcfg, JudgeEvalConfig)  # fails here, before any work, on a bad or renamed key
    with out_dir_lock(anchored(cfg.trainer.out_dir)):  # a second run on this out_dir fails at once
        return _run(cfg)


def _run(cfg: JudgeEvalConfig) -> dict[str, Any]:
    judge_cfg = cfg.judge
    seed_everything(cfg.trainer.seed)
    out_dir = Path(anchored(cfg.trainer.out_dir))
    root = data_root(anchored(cfg.data_root) if cfg.data_root else None)
    data = {s: load_processbench(root / "processbench" / f"{s}.json", cfg.eval.limit) for s in cfg.eval.subsets}
    records = [r for rows in data.values() for r in rows]  # what an oracle may reveal
    ledger_path = anchored(judge_cfg.ledger_path) if judge_cfg.ledger_path else str(out_dir / "ledger.sqlite")
    out_dir.mkdir(parents=True, exist_ok=True)
    judge, ledger = open_judge(replace(judge_cfg, ledger_path=ledger_path), records=records)  # checked here
    with ledger:
        results = {s: evaluate_subset(judge, ledger, rows, s) for s, rows in data.items()}
        stats = ledger.stats().get(judge.identity, {})
    f1s = [r["f1"] for r in results.values()]
    report = {"judge": judge.identity, "subsets": results,
              "mean_f1": sum(f1s) / len(f1s) if f1s else math.nan,
              "ledger": ledger_path, "ledger_stats": stats,
              "judge_config": OmegaConf.to_container(OmegaConf.structured(judge_cfg))}
    _print(report)
    out = out_dir / f"{judge_cfg.name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log_metrics(out_dir, report)
    print(f"wrote {out}")
    return report


def log_metrics(out_dir: Path, report: dict[str, Any]) -> None:
    """The run's scores as the other commands log theirs (core.run.MetricsLog): one line, step 0, in
    metrics.jsonl (rewritten: the report is this run's) and the same scalars in TensorBoard."""
    metrics = {"step": 0, "judge": report["judge"], "mean_f1": report["mean_f1"]}
    for name, r in report["subsets"].items():
        metrics.update({f"{name}/{key}": r[key] for key in ("f1", "acc_error", "acc_correct", "n", "invalid",
                                                            "paid_calls", "from_ledger", "failed",
                                                            "unlabelled_budget")})
    log = MetricsLog(out_dir, "step", history=[])
    log.write(metrics)
    log.close()


def _print(report: dict[str, Any]) -> None:
    print(f"\nProcessBench, judge {report['judge']}")
    print(f"{'subset':<14}{'n':>6}{'acc_err':>9}{'acc_cor':>9}{'F1':>8}{'invalid':>9}{'no budget':>11}"
          f"{'failed':>8}{'paid':>7}{'tokens':>10}")
    for name, r in report["subsets"].items():
        print(f"{name:<14}{r['n']:>6}{r['acc_error']:>9.3f}{r['acc_correct']:>9.3f}{r['f1']:>8.3f}"
              f"{r['invalid']:>9}{r['unlabelled_budget']:>11}{r['failed']:>8}{r['paid_calls']:>7}"
              f"{r['prompt_tokens'] + r['completion_tokens']:>10}")
    print(f"{'mean F1':<14}{'':>6}{'':>9}{'':>9}{report['mean_f1']:>8.3f}\n")


@hydra.main(config_path="pkg://configs", config_name="judge_eval", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
