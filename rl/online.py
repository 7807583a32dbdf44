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
from rl.config import OnlineConfig, PRMUpdate, ProcessSource, RewardSource
from core.distributed import Ranks, accept_local_rank_argument


def needs_prm(cfg: OnlineConfig) -> bool:
    """PRIME's implicit reward (algo.process_source=implicit) needs no PRM of its own; selection or updates may."""
    process = cfg.algo.reward != RewardSource.outcome and cfg.algo.process_source != ProcessSource.implicit
    return process or cfg.select.mode in (SelectMode.uncertain, SelectMode.random) or cfg.prm_update != PRMUpdate.none


def ledger_path(cfg: OnlineConfig) -> str:
    return cfg.judge.ledger_path or str(Path(cfg.trainer.out_dir) / "labels.sqlite")


def build(cfg: OnlineConfig):
    """Every component of a run, from the validated config."""
    import judges.chain  # noqa: F401  (registers the built-in judges)
    import judges.llm  # noqa: F401
    import judges.oracle  # noqa: F401
    import judges.rule  # noqa: F401
    from judges.base import make_judge
    from judges.ledger import LabelLedger
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
    out_dir = Path(cfg.trainer.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.trainer.seed)
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
    learner = None
    if needs_prm(cfg):
        from prm.model import EnsemblePRM
        from prm.update import PRMLearner
        learner = PRMLearner(EnsemblePRM.from_config(cfg.prm), cfg.trainer)
    judge = ledger = None
    if ranks.is_main:  # rank 0 owns the judge client and the ledger: a label is paid once, whatever N
        judge = make_judge(cfg.judge)
        ledger = LabelLedger.from_config(cfg.judge, default_path=ledger_path(cfg))
    stream = TaskStream(task.problems, cfg.task.seed)
    loop = OnlineLoop(cfg, task, stream, policy, rollout, learner, judge, ledger, AnswerChecker(), ranks)
    if cfg.algo.process_source == ProcessSource.implicit and cfg.algo.reward != RewardSource.outcome:
        from prm.implicit import ImplicitPRM
        loop.implicit = ImplicitPRM.from_policy(cfg.policy, cfg.algo, cfg.trainer.seed, policy.device)
    if learner is not None and cfg.replay.enabled and cfg.prm_update != PRMUpdate.none:  # a frozen PRM replays nothing
        from prm.replay import LabelReplay
        loop.replay = LabelReplay(ledger, judge.identity, cfg.replay, cfg.trainer.seed,
                                  heldout_set(loop, cfg, out_dir), cfg.prm.threshold)
    return loop, out_dir


def heldout_set(loop, cfg: OnlineConfig, out_dir: Path) -> list:
    """The fixed held-out judged set: the initial policy's samples on problems of another seed, judged
    through their own ledger (out_dir/heldout.sqlite: never paid twice, never trained on) and kept in
    out_dir/heldout.jsonl so a resumed run measures on the same set."""
    from dataclasses import replace

    from judges.ledger import LabelLedger
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
    problems = make_task(replace(cfg.task, seed=cfg.task.seed + 10_007), cfg.data_root).problems
    n_prompts = -(-cfg.replay.heldout_size // r.n)
    prompts = [loop.task.prompt(loop.tok, p.question) for p in problems[:n_prompts]]
    groups = loop.rollout.generate(prompts, r.n, r.max_new_tokens, r.temperature, r.top_p, list(r.stop) or None)
    items = [(p.question, attempt_steps(c.text))
             for p, group in zip(problems, groups) for c in group][:cfg.replay.heldout_size]
    with LabelLedger(out_dir / "heldout.sqlite") as ledger:
        verdicts = ledger.label(loop.judge, items)
    trajectories = [Trajectory(q, steps, v.first_error, source="heldout")
                    for (q, steps), v in zip(items, verdicts) if v is not None and v.first_error is not None]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(t.to_json()) + "\n" for t in trajectories))
    os.replace(tmp, path)
    return trajectories


def run(cfg: OnlineConfig, stop_after: int | None = None) -> list[dict]:
    """Run (or resume) `cfg.rounds` rounds; `stop_after` ends the process's work early (tests: a kill)."""
    from tqdm import tqdm

    from core.run import MetricsLog
    from rl.checkpoint import load_round, resolve_resume, save_round
    from rl.evaluate import due, eval_problems, evaluate_policy
    from rl.report import phase_line, plot_rounds, summary_table
    from rl.schedule import effective_schedule, run_rounds

    loop, out_dir = build(cfg)
    main_rank = loop.ranks.is_main
    if main_rank:
        OmegaConf.save(OmegaConf.structured(cfg), out_dir / "config.yaml")
    history: list[dict] = []
    start_round = 1
    resume_from = resolve_resume(cfg.trainer.resume, out_dir)
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
    eval_set = eval_problems(cfg, loop.task.problems) if cfg.eval.every else []   # the policy's (rl/evaluate.py)
    if eval_set and start_round == 1:   # round 0: the initial policy (veRL's validation before training)
        history.append({"round": 0, **evaluate_policy(loop, eval_set)})
        if main_rank:
            log.write(history[-1])
            print(f"round 0: held-out pass {history[-1]['eval/pass']:.3f} (initial policy)")
    last = cfg.rounds if stop_after is None else min(cfg.rounds, stop_after)
    bar = tqdm(total=last - start_round + 1, desc="rounds", disable=not (cfg.trainer.progress and main_rank),
               dynamic_ncols=True)
    loop.on_phase = lambda index, phase: bar.set_description(f"round {index}/{cfg.rounds}: {phase}")
    schedule = effective_schedule(cfg)
    if schedule != cfg.schedule and main_rank:
        print(f"[rl.online] schedule={cfg.schedule} needs prm_update=pre_update_rewards|none, one process and "
              "trainer.zero_stage<=2 (the PRM's): running serially")
    for done in run_rounds(loop, range(start_round, last + 1), schedule):
        index, metrics, stds = done.index, done.metrics, done.stds
        bar.update(1)
        if eval_set and due(cfg, index):   # the policy after this round's update, before the next one's
            with_timer = time.perf_counter()
            metrics.update(evaluate_policy(loop, eval_set))
            metrics["timing/evaluate"] = time.perf_counter() - with_timer
        with_timer = time.perf_counter()
        if cfg.trainer.save_every and index % cfg.trainer.save_every == 0:
            save_round(out_dir, index, loop.policy, loop.learner,
                       {"data_position": done.data_position, "history": history + [metrics],
                        "ledger": str(loop.ledger.path) if loop.ledger else None, "rng": done.rng,
                        **({"replay": loop.replay.state_dict()} if loop.replay is not None else {})},
                       cfg.keep_checkpoints, loop.ranks, implicit=loop.implicit)
        metrics["timing/checkpoint"] = time.perf_counter() - with_timer
        history.append(metrics)
        if main_rank:
            log.write(metrics, {"prm/ensemble_std": stds})
            bar.set_postfix(passed=f"{metrics['pass_rate']:.2f}", judged=metrics["judge/calls"])
            held = f"  held-out pass {metrics['eval/pass']:.3f}" if "eval/pass" in metrics else ""
            tqdm.write(f"round {index}: pass {metrics['pass_rate']:.3f}{held}  judge calls {metrics['judge/calls']}  | "
                       f"{phase_line(metrics)}")
    if main_rank:
        log.close()
    if main_rank and (stop_after is None or last == cfg.rounds):
        finish(cfg, history, out_dir, summary_table, plot_rounds)
    loop.checker.close()
    return history


def finish(cfg, history, out_dir, summary_table, plot_rounds) -> None:
    summary_table(history, f"prmloop online: {cfg.task.name}, select={cfg.select.mode}, reward={cfg.algo.reward}, "
                           f"prm_update={cfg.prm_update}")
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
