"""Claim (e)'s scorers on one policy build (bench/claims/e_prm_quality.md): every arm learns from the same
<= 1,024 judged pool trajectories of a seed, then scores every step of the test set.

    python -m bench.claims.run_e --out DIR --model BUILD --seeds 0 1 2 3 4 --labels 1024

DIR holds bench_chain_pool --stage pool's judged samples of the claim's sets: pool.jsonl, tune.jsonl (the
validation set: F1's threshold, nothing else) and test.jsonl. Per seed, a seeded random draw of <= --labels
pool trajectories trains or fits

    prm                    K = 32 heads on the policy's hidden state + its step log-probs (prm.step_features=
                           hidden_logprob, as configs/prm/chain_tiny.yaml), on the judge's first-error labels
    prm_no_confidence      the same heads without the two log-prob columns (step_features=hidden)
    orm                    the prm's heads and features trained on each trajectory's outcome (prm.train.train_on_pool
                           outcomes=): a step's score is the ORM's score of the prefix ending at that step, since the
                           causal backbone's state at a step's separator has seen no later token
    confidence             the policy's min token probability of the step (prm.confidence), no labels
    confidence_calibrated  that through a logistic fit on the draw's labelled steps (prm.confidence.CalibratedConfidence)

The backbone runs once per build: the hidden_logprob features are cached (features_hidden_logprob.safetensors)
and the hidden ones are their first columns. Writes DIR/e_rows.jsonl: per (seed, arm, test problem) the step
pairs [[label, score], ...] (auroc_within) and, under metric first_error_f1, [[first error, predicted], ...]
at the threshold that maximises F1 on validation; DIR/e_summary.jsonl: per (seed, arm) the pooled step AUROC,
the x * 7 / x * 8 product AUROC and the rest of bench_chain_pool.quality, with the seconds it took.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import torch

ARMS = ("prm", "prm_no_confidence", "confidence", "confidence_calibrated", "orm")   # the claim's order
HEADS = {"prm": "hidden_logprob", "prm_no_confidence": "hidden", "orm": "hidden_logprob"}   # arm -> step features
ROWS, SUMMARY = "e_rows.jsonl", "e_summary.jsonl"


def right(t) -> bool:
    """The ORM's label: no wrong step (the judge) and the final answer verified; a trajectory cut short has no
    wrong step but no answer, a lucky one the right answer after a wrong step: neither is a right solution."""
    return t.first_error == -1 and bool(t.meta.get("passed"))


def bench_args(args, step_features: str) -> argparse.Namespace:
    """bench_chain_pool's settings of a PRM run (its prm_config: K = 32, head width 64, head lr 3e-3, batch 32)."""
    from bench.bench_chain_pool import parse_args
    return parse_args(["--stage", "runs", "--out", str(args.out), "--model", args.model, "--step-features",
                       step_features, "--epochs", str(args.epochs)])


def feature_caches(args, items) -> dict:
    """step_features -> FeatureCache of every item. separator_features appends the two log-prob columns to
    the hidden state, so the hidden features are the hidden_logprob ones less their last two columns."""
    from bench.bench_chain_pool import features
    from prm.features import FeatureCache
    full = features(bench_args(args, "hidden_logprob"), Path(args.out), items)
    hidden = FeatureCache(full.max_length, full.dtype)
    hidden.store = {k: v[:, :-2] for k, v in full.store.items()}
    return {"hidden_logprob": full, "hidden": hidden}


def confidences(model_path: str, items) -> dict:
    """item key -> the policy's min token probability of each step (one pass per distinct item)."""
    from core.models import load_model
    from judges.base import item_key
    from prm.confidence import PolicyConfidence
    model, tok = load_model(model_path, "fp32")
    distinct = list({item_key(t.question, t.steps): t for t in items}.items())
    scores = PolicyConfidence(model, tok, "min", batch_size=64)([t.question for _, t in distinct],
                                                                 [t.steps for _, t in distinct])
    return {k: s for (k, _), s in zip(distinct, scores)}


def scorer(args, arm: str, draw, caches: dict, conf: dict, seed: int):
    """items -> step scores of `arm`, trained or fitted on `draw` (the seed's labelled trajectories), and
    what the fit learnt worth keeping (labels used, the calibration's coefficients)."""
    from bench.bench_chain_pool import prm_scores, train_run
    from judges.base import item_key
    from prm.confidence import CalibratedConfidence
    of = lambda items: [conf[item_key(t.question, t.steps)] for t in items]
    if arm == "confidence":
        return of, {"labels": 0}
    if arm == "confidence_calibrated":
        fit = CalibratedConfidence.fit(of(draw), [t.first_error for t in draw])
        return lambda items: fit.transform(of(items)), {"labels": len(draw), "intercept": fit.intercept,
                                                         "slope": fit.slope}
    cache = caches[HEADS[arm]]
    prm, summary = train_run(bench_args(args, HEADS[arm]), Path(args.out), draw, cache, "full", 1.0, seed,
                             outcome=right if arm == "orm" else None)
    return lambda items: prm_scores(prm, cache, items), {"labels": summary["labels_used"]}


def significant(x: float) -> float:
    """Six significant digits: the raw file stays small and every order that matters survives."""
    return float(f"{x:.6g}")


def problem_rows(seed: int, arm: str, test, scores, tau: float) -> list[dict]:
    """Raw rows of one (seed, arm): per test problem the within-problem AUROC's counts over its labelled
    steps pooled across its samples, {"wins": right-over-wrong pairs (ties 1/2), "pairs": n} (the statistic
    bench/claims/metrics.py auroc_within sums: a file of kilobytes where the step pairs took megabytes), and
    its samples' [first error, first step scored below tau] (first_error_f1)."""
    from core.steps import first_below
    from prm.quality import _pair_stats, labelled_steps
    pairs, picks = defaultdict(list), defaultdict(list)
    for t, s in zip(test, scores):
        pairs[t.question] += [(y, significant(v)) for y, v in labelled_steps([t.first_error], [s])]
        picks[t.question].append([t.first_error, first_below(list(s), tau)])
    counts = {q: dict(zip(("wins", "pairs"), _pair_stats(v))) for q, v in pairs.items()}
    return ([{"seed": seed, "arm": arm, "problem": q, "value": v} for q, v in counts.items()]
            + [{"seed": seed, "arm": arm, "problem": q, "metric": "first_error_f1", "value": v} for q, v in picks.items()])


def run_seed(args, seed: int, sets: dict, caches: dict, conf: dict) -> tuple[list[dict], list[dict]]:
    from bench.bench_chain_pool import quality
    from prm.eval import tune_threshold
    pool, tune, test = sets["pool"], sets["tune"], sets["test"]
    draw = random.Random(seed).sample(pool, min(args.labels, len(pool)))
    rows, summary = [], []
    for arm in args.arms:
        start = time.perf_counter()
        score, fitted = scorer(args, arm, draw, caches, conf, seed)
        tau = tune_threshold(score(tune), [t.first_error for t in tune])
        test_scores = score(test)
        rows += problem_rows(seed, arm, test, test_scores, tau)
        summary.append({"seed": seed, "arm": arm, **fitted, "tau": tau, **quality(test, test_scores, tau),
                        "seconds": round(time.perf_counter() - start, 2)})
        print(json.dumps(summary[-1]), flush=True)
    return rows, summary


def run(args) -> None:
    from bench.bench_chain_pool import load
    out = Path(args.out)
    sets = {name: load(out, name) for name in ("pool", "tune", "test")}
    start = time.perf_counter()
    everything = sets["pool"] + sets["tune"] + sets["test"]
    caches = feature_caches(args, everything)
    conf = confidences(args.model, everything)
    print(f"[run_e] features and confidences of {len(everything)} trajectories: {time.perf_counter() - start:.0f} s",
          flush=True)
    rows, summary = [], []
    for seed in args.seeds:
        start = time.perf_counter()
        r, s = run_seed(args, seed, sets, caches, conf)
        rows, summary = rows + r, summary + s
        print(f"[run_e] seed {seed}: {time.perf_counter() - start:.1f} s", flush=True)
    for name, lines in ((SUMMARY, summary), (ROWS, rows)):   # the rows last: their file marks the stage done
        tmp = out / (name + ".tmp")
        tmp.write_text("".join(json.dumps(x) + "\n" for x in lines))
        tmp.replace(out / name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="bench_chain_pool --stage pool's folder of one build")
    ap.add_argument("--model", required=True, help="the policy build (a name or its directory)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--labels", type=int, default=1024, help="judged pool trajectories each seed draws")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    ap.add_argument("--epochs", type=int, default=10, help="passes over the draw of every trained arm")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    run(parse_args(argv))


if __name__ == "__main__":
    main()
