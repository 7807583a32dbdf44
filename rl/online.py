"""`python -m rl.online`: online RL with the ensemble PRM in the loop (docs/method.md, the online round).

    python -m rl.online                                     # CPU default: SmolLM2 + arithmetic + rule judge
    python -m rl.online select.mode=all                     # judge-all baseline
    python -m rl.online select.mode=random                  # random selection at Eq. 5's budget
    python -m rl.online prm_update=none select.mode=none    # frozen PRM, no judge
    python -m rl.online algo.reward=outcome select.mode=none prm_update=none   # outcome-only RL
    python -m rl.online --config-name online_gsm8k          # GSM8K with the llm judge
Resume: rerun with the same trainer.out_dir (trainer.resume=auto picks the latest round checkpoint).
Data parallel, the same command under a launcher (task.prompts_per_round is the global batch):
    torchrun --nproc_per_node 2 -m rl.online ...            # or: deepspeed --num_gpus 8 --module rl.online ...
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from core.run import anchored, seed_everything
from prm.config import SelectMode
from core.config import validate
from rl.config import OnlineConfig, PRMUpdate, ProcessSource, RewardSource, overlap_blockers

from core.config import resolve_device
from core.distributed import Ranks, accept_local_rank_argument


def needs_prm(cfg: OnlineConfig) -> bool:
    """PRIME's implicit reward (algo.process_source=implicit) needs no PRM of its own; selection or updates may."""
    process = cfg.algo.reward != RewardSource.outcome and cfg.algo.process_source != ProcessSource.implicit
    return process or cfg.select.mode in (SelectMode.uncertain, SelectMode.random) or cfg.prm_update != PRMUpdate.none


def ledger_path(cfg: OnlineConfig, world: int | None = None) -> str:
    """judge.ledger_path, else <out_dir>/ledger.sqlite, or with several ranks or an out_dir on a network
    filesystem a node-local path (trainer.local_dir; SQLite's WAL needs one host's locks: core/storage.py),
    copied into every round checkpoint."""
    if cfg.judge.ledger_path:
        return cfg.judge.ledger_path
    return str((ledger_dir(cfg, world) or Path(cfg.trainer.out_dir)) / "ledger.sqlite")


def ledger_dir(cfg: OnlineConfig, world: int | None = None) -> Path | None:
    """The node-local directory of the judge ledger, or None when it stays in out_dir."""
    from core.storage import default_local_dir, network_filesystem

    world = world if world is not None else Ranks.from_env().world
    out_dir = Path(cfg.trainer.out_dir)
    if cfg.judge.ledger_path or (world == 1 and network_filesystem(out_dir) is None):
        return None
    return Path(cfg.trainer.local_dir) if cfg.trainer.local_dir else default_local_dir(out_dir)


def build(cfg: OnlineConfig):
    """Every component of a run, from the validated config."""
    import judges.chain  # noqa: F401  (registers the built-in judges)
    import judges.llm  # noqa: F401
    import judges.oracle  # noqa: F401
    import judges.rule  # noqa: F401
    from judges.session import open_judge
    from core.answers import AnswerChecker
    from rl.engines import rollout_from_config
    from rl.loop import OnlineLoop
    from rl.policy import PolicyTrainer
    from tasks.registry import TaskStream, make_task

    ranks = Ranks.from_env()
    if ranks.world > 1 and not cfg.trainer.deepspeed:
        raise ValueError(f"WORLD_SIZE={ranks.world}: data-parallel rl.online all-reduces through DeepSpeed; "
                         "set trainer.deepspeed=true")
    ranks.shard_bounds(cfg.task.prompts_per_round)   # fail now, not at round 1, when it does not divide
    check_memory(cfg, ranks)
    out_dir = Path(cfg.trainer.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if ranks.world > 1:   # every rank must write its shards into the same out_dir: check before any model loads
        from core.distributed import init_distributed
        from core.storage import check_shared_dir
        init_distributed(cfg.trainer.dist_timeout_min)
        check_shared_dir(out_dir, ranks)
    seed_everything(cfg.trainer.seed)
    judge = ledger = None
    if ranks.is_main:  # rank 0 owns the judge client and the ledger: a label is paid once, whatever N.
        # Opened (and an llm judge checked: endpoint, key, model) before any model loads or generates.
        judge, ledger = open_judge(cfg.judge, default_path=ledger_path(cfg))
    task = make_task(cfg.task, cfg.data_root)
    policy = PolicyTrainer(cfg.policy, cfg.algo, cfg.trainer)
    if cfg.rollout.backend == "hf" and policy.zero_stage == 3:
        raise ValueError("policy ZeRO-3 partitions the weights the HF rollout generates with: use rollout=vllm")
    policy.temperature = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
    r = cfg.rollout
    colocate = r.colocate if r.colocate is not None else (ranks.world > 1 and policy.device.type == "cuda")
    if colocate and r.tensor_parallel_size > 1:  # a TP group would have to submit identical prompts (not done)
        raise ValueError("rollout.colocate with rollout.tensor_parallel_size > 1 is not supported: colocated "
                         "engines are one per rank (tensor_parallel_size=1); tensor parallelism is for one process")
    rollout = rollout_from_config(r, cfg.policy, policy.module, policy.tokenizer, ranks.seed(cfg.trainer.seed, 0),
                                  colocate)
    if colocate:  # every rank's engine up before any rank goes on (TRL: DeepSpeed hangs otherwise)
        ranks.barrier()
    rollout.sleep()   # rollout.sleep: the engine's memory free before the PRM loads (a no-op otherwise)
    learner = None
    if needs_prm(cfg):
        from prm.model import EnsemblePRM
        from prm.update import PRMLearner
        learner = PRMLearner(EnsemblePRM.from_config(cfg.prm), cfg.trainer)
    from rl.evaluate import training_problems
    stream = TaskStream(training_problems(cfg, task.problems), cfg.task.seed)
    loop = OnlineLoop(cfg, task, stream, policy, rollout, learner, judge, ledger, AnswerChecker(), ranks)
    if cfg.algo.process_source == ProcessSource.implicit and cfg.algo.reward != RewardSource.outcome:
        from prm.implicit import ImplicitPRM
        loop.implicit = ImplicitPRM.from_policy(cfg.policy, cfg.algo, cfg.trainer.seed, policy.device)
    if learner is not None and cfg.replay.enabled and cfg.prm_update != PRMUpdate.none:  # a frozen PRM replays nothing
        from prm.replay import LabelReplay
        heldout = heldout_set(loop, cfg, out_dir)
        loop.replay = LabelReplay(ledger, judge.identity, cfg.replay, cfg.trainer.seed, heldout, cfg.prm.threshold)
    return loop, out_dir


def check_memory(cfg: OnlineConfig, ranks: Ranks) -> None:
    """On cuda, before any model loads: print the per-GPU memory plan (rank 0) and refuse one over the card
    (rl/plan.py; plan.check=false starts anyway)."""
    device = resolve_device(cfg.policy.device)
    if device.startswith("cuda"):
        import torch

        from rl.plan import startup_check
        startup_check(cfg, ranks.world, torch.cuda.get_device_properties(device).total_memory / 1e9, ranks.is_main)


def heldout_set(loop, cfg: OnlineConfig, out_dir: Path) -> list:
    """The fixed held-out judged set: the initial policy's samples on problems of another seed that the run
    never trains on (rl.evaluate.fresh: the held-out partition, no training question), judged through the
    run's ledger (one budget, one count: its calls go into round 1's judge/* metrics, as judge/heldout_calls
    too; never paid twice; the replay never trains on them) and kept in out_dir/heldout.jsonl so a resumed
    run measures on the same set. prm.replay tunes the F1 threshold on half its problems."""
    from dataclasses import replace

    from judges.session import judge_metrics, label_counted
    from prm.data import load_trajectories_jsonl
    from tasks.problems import Trajectory
    from rl.loop import attempt_steps
    from tasks.registry import make_task

    path = out_dir / "heldout.jsonl"
    if cfg.replay.heldout_size <= 0:
        return []
    if path.is_file():
        return load_trajectories_jsonl(path)
    r = cfg.rollout
    from rl.evaluate import fresh
    problems = fresh(cfg, make_task(replace(cfg.task, seed=cfg.task.seed + 10_007), cfg.data_root).problems,
                     loop.stream.problems)
    n_prompts = -(-cfg.replay.heldout_size // r.n)
    prompts = [loop.task.prompt(loop.tok, p.question) for p in problems[:n_prompts]]
    groups = loop.rollout.generate(prompts, r.n, r.max_new_tokens, r.temperature, r.top_p, list(r.stop) or None)
    items = [(p.question, attempt_steps(c.text))
             for p, group in zip(problems, groups) for c in group][:cfg.replay.heldout_size]
    verdicts, counts, wall_s = label_counted(loop.ledger, loop.judge, items)
    loop.pending_judge = {**judge_metrics(counts, wall_s, calls=True), "judge/heldout_calls": counts.cost.calls}
    trajectories = [Trajectory(q, steps, v.first_error, source="heldout")
                    for (q, steps), v in zip(items, verdicts) if v is not None and v.first_error is not None]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(t.to_json()) + "\n" for t in trajectories))
    os.replace(tmp, path)
    return trajectories


def run(cfg: OnlineConfig, stop_after: int | None = None) -> list[dict]:
    """Run (or resume) `cfg.rounds` rounds; `stop_after` ends the process's work early (tests: a kill).
    Rank 0 holds trainer.out_dir's lock first: a second run there fails before anything loads."""
    from core.run import out_dir_lock

    with out_dir_lock(cfg.trainer.out_dir, enabled=int(os.environ.get("RANK", "0")) == 0):
        return _run(cfg, stop_after)


def _run(cfg: OnlineConfig, stop_after: int | None) -> list[dict]:
    from tqdm import tqdm

    from core.run import MetricsLog
    from rl.checkpoint import load_round, resolve_resume, restore_ledger, save_round
    from rl.evaluate import due, eval_problems, evaluate_policy
    from rl.report import phase_line, plot_rounds, summary_table
    from rl.schedule import effective_schedule, run_rounds

    resume_from = resolve_resume(cfg.trainer.resume, cfg.trainer.out_dir, full=cfg.trainer.resume_check == "sha256")
    local = ledger_dir(cfg)
    if resume_from is not None and local is not None and Ranks.from_env().is_main:   # before the ledger opens
        print(f"[rl.online] judge ledger: {restore_ledger(resume_from, Path(ledger_path(cfg)))}")
    loop, out_dir = build(cfg)
    main_rank = loop.ranks.is_main
    if main_rank:
        OmegaConf.save(OmegaConf.structured(cfg), out_dir / "config.yaml")
    history: list[dict] = []
    start_round = 1
    if resume_from is not None:
        state = load_round(resume_from, loop.policy, loop.learner, loop.ranks, verified=True, implicit=loop.implicit)
        loop.stream.position, history, start_round = state["data_position"], state["history"], state["round"] + 1
        if loop.replay is not None and "replay" in state:
            loop.replay.load_state_dict(state["replay"])
        loop.rollout.sync_weights(None if loop.rollout_shares_policy() else loop.policy.weights_for_sync(),
                                  loop.policy.version)
        if main_rank:
            print(f"[rl.online] resumed from {resume_from} (round {state['round']}, "
                  f"data position {loop.stream.position})")
    log = MetricsLog(out_dir, "round", history) if main_rank else None   # rank 0 writes the (global) metrics
    eval_set = eval_problems(cfg, loop.stream.problems) if cfg.policy_eval.every else []   # the policy's (rl/evaluate.py)
    def evaluate(index: int) -> dict:
        rows: list[dict] = []
        out = evaluate_policy(loop, eval_set, rows)
        if main_rank:   # per problem: the raw results behind eval/pass (bench/claims reads them)
            with (out_dir / "eval_problems.jsonl").open("a") as fh:
                fh.writelines(json.dumps({"round": index, **row}) + "\n" for row in rows)
        return out
    if eval_set and start_round == 1 and cfg.policy_eval.before_train:   # round 0: the initial policy
        history.append({"round": 0, **evaluate(0)})
        if main_rank:
            log.write(history[-1])
            print(f"round 0: held-out pass {history[-1]['eval/pass']:.3f} (initial policy)")
    last = cfg.rounds if stop_after is None else min(cfg.rounds, stop_after)
    bar = tqdm(total=last - start_round + 1, desc="rounds", disable=not (cfg.trainer.progress and main_rank),
               dynamic_ncols=True)
    loop.on_phase = lambda index, phase: bar.set_description(f"round {index}/{cfg.rounds}: {phase}")
    schedule = effective_schedule(cfg)
    if cfg.schedule == "auto" and schedule == "serial" and main_rank:
        print("[rl.online] schedule=auto runs serially: " + "; ".join(overlap_blockers(cfg)))
    for done in run_rounds(loop, range(start_round, last + 1), schedule):
        index, metrics, stds = done.index, done.metrics, done.stds
        if loop.pending_judge:  # the held-out set's judge calls, inside the run's one count
            metrics.update({k: metrics.get(k, 0) + v for k, v in loop.pending_judge.items()})
            loop.pending_judge = None
        bar.update(1)
        if eval_set and due(cfg, index):   # the policy after this round's update, before the next one's
            with_timer = time.perf_counter()
            metrics.update(evaluate(index))
            metrics["timing/evaluate"] = time.perf_counter() - with_timer
        with_timer = time.perf_counter()
        if cfg.trainer.save_every and index % cfg.trainer.save_every == 0:
            save_round(out_dir, index, loop.policy, loop.learner,
                       {"data_position": done.data_position, "history": history + [metrics],
                        "ledger": str(loop.ledger.path) if loop.ledger else None, "rng": done.rng,
                        **({"replay": loop.replay.state_dict()} if loop.replay is not None else {})},
                       cfg.keep_checkpoints, loop.ranks, ledger=loop.ledger.path if loop.ledger and local else None,
                       implicit=loop.implicit)
        metrics["timing/checkpoint"] = time.perf_counter() - with_timer
        history.append(metrics)
        if main_rank:
            log.write(metrics, {"prm/ensemble_std": stds})
            bar.set_postfix(passed=f"{metrics['pass_rate']:.2f}", judged=metrics["judge/calls"])
            held = f"  held-out pass {metrics['eval/pass']:.3f}" if "eval/pass" in metrics else ""
            unlabelled = ", ".join(f"{metrics[k]} {name}" for k, name in (
                ("judge/invalid", "invalid"), ("judge/refused_budget", "over budget"), ("judge/failed", "failed"))
                if metrics.get(k))
            tqdm.write(f"round {index}: pass {metrics['pass_rate']:.3f}{held}  judge calls {metrics['judge/calls']}"
                       f"{f' ({unlabelled})' if unlabelled else ''}  | {phase_line(metrics)}")
    if main_rank:
        log.close()
    if main_rank and (stop_after is None or last == cfg.rounds):
        finish(cfg, history, out_dir, summary_table, plot_rounds)
    loop.checker.close()
    if hasattr(loop.rollout, "close"):  # a vLLM engine's worker processes end with the run
        loop.rollout.close()
    return history


def finish(cfg, history, out_dir, summary_table, plot_rounds) -> None:
    summary_table(history, f"prmloop online: {cfg.task.name}, select={cfg.select.mode}, reward={cfg.algo.reward}, "
                           f"prm_update={cfg.prm_update}", cfg.trainer.seed)
    plot = plot_rounds(history, out_dir / "rounds.png") if cfg.plot else None
    print(f"outputs: {out_dir.resolve()}\n  metrics  {out_dir / 'metrics.jsonl'}\n  tensorboard  {out_dir / 'tb'}\n"
          f"  checkpoints  {out_dir / 'checkpoints'}\n  judge ledger  {ledger_path(cfg)}"
          + (f"\n  plot  {plot}" if plot else ""))


@hydra.main(config_path="pkg://configs", config_name="online", version_base=None)
def main(raw: DictConfig) -> None:
    from rl.rollout import exit_on_sigterm

    exit_on_sigterm()   # a killed run shuts its vLLM engine down; checkpoints + ledger make it resumable
    cfg = validate(raw, OnlineConfig)
    cfg.trainer.out_dir = anchored(cfg.trainer.out_dir)
    run(cfg)


if __name__ == "__main__":  # the spawn guard vLLM needs
    accept_local_rank_argument()   # the deepspeed launcher's --local_rank=N, before hydra parses argv
    main()
