"""The RL stage (GRPO, PPO, RLOO, REINFORCE++, and any estimator registered in ``aha.algos``), top to bottom.

    prompts ─► collect: the old policy samples G completions each ─► rewards (DAPO: resample flat groups)
            ─► score (no grad): old policy, reference, critic values
            ─► advantages: group-relative (GRPO), leave-one-out (RLOO), whitened returns (REINFORCE++), GAE (PPO)
            ─► update: μ passes × minibatches: policy loss vs the old policy (+ β·KL in the loss for GRPO; in the
               reward for the others) (+ clipped value loss) (− entropy bonus) ─► backprop + step (skipped where
               the loss or gradient norm is not finite; train.max_skipped_steps in a row stop the run)
            ─► sync: the engine samples from the new weights ─► log / eval / checkpoint ─► repeat

The phases are in :mod:`aha.rl.phases` and :mod:`aha.rl.optimize`, the data they pass in :mod:`aha.rl.batch`, the maths
in :mod:`aha.algos`, the run skeleton (resume, logging, cadence, report) in :mod:`aha.run`.
"""

from __future__ import annotations

import time
from pathlib import Path

from aha.config import RunConfig
from aha.evaluation import evaluate
from aha.rl.context import RLContext, build_context, restore, trainer_group
from aha.rl.optimize import update
from aha.rl.phases import (
    advantages,
    collect,
    guard_act,
    guard_check,
    log_samples,
    score,
    step_metrics,
    sync,
)
from aha.run import Run


def train_rl(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict:
    """Run the RL algorithm ``cfg.rl.algo`` as configured, writing everything to ``run_dir``.
    Returns the last logged metrics."""
    run = Run(cfg, run_dir, resume, cfg.rl.algo)
    ctx = build_context(cfg, run)
    start = run.begin(lambda ckpt: restore(ctx, ckpt), ctx.task.note)
    ctx.trainers = trainer_group(ctx)  # distributed.trainers > 1: ranks 1..M−1 join, from these weights (else None)
    sync(ctx)  # a sampler with its own copy (rollout.compile) starts from the weights RL starts from
    last: dict = {}
    if run.eval_due(0):
        last = run_eval(ctx)
        run.log(0, last)
    for step in run.steps(start):
        t0 = time.perf_counter()
        batch, info = collect(ctx)
        t_rollout = time.perf_counter() - t0
        if batch is None:  # every group agreed: nothing to learn from this step (eval and save still run when due)
            last = {
                "reward/mean": info["last_reward_mean"],
                "frac_reward_zero_std": info["zero_std_frac"],
                "dynamic_sampling/rounds": info["rounds"],
            }
        else:
            t1 = time.perf_counter()
            score(ctx, batch)
            advantages(ctx, batch)
            stats, skipped = update(ctx, batch)  # skipped: what was not finite, if an optimizer step was skipped
            times = {"rollout": t_rollout, "train": time.perf_counter() - t1}
            sync(ctx)
            times["step"] = time.perf_counter() - t0
            last = step_metrics(ctx, batch, info, stats, times) | run.count_skipped(step, skipped)
        if run.eval_due(step):
            last.update(run_eval(ctx))
        decision = guard_check(ctx, step, last) if batch is not None else None  # the reward-hacking guard
        run.log(
            step,
            last,
            shown=None
            if batch is None
            else {"reward": f"{last['reward/mean']:.3f}", "s/step": f"{last['time/step_s']:.2f}"},
        )
        if batch is not None:
            log_samples(ctx, step, batch)
        run.stop_if_failing(step)  # train.max_skipped_steps skipped in a row
        if guard_act(ctx, step, decision):  # stopped (rolled back to the best weights where asked)
            break
        if run.save_due(step):
            run.save(step, ctx.policy, ctx.tokenizer, ctx.state())
    return run.finish(last)


def run_eval(ctx: RLContext) -> dict:
    """Greedy accuracy on the task's held-out rows, judged by the task's verifier or ``task.eval_reward``."""
    result = evaluate(
        ctx.engine,
        ctx.tokenizer,
        ctx.task,
        ctx.task.eval,
        ctx.template,
        ctx.cfg.rollout.max_new_tokens,
        scorer=ctx.eval_scorer,
        response_prefix=ctx.cfg.task.response_prefix,
    )
    out = {"eval/accuracy": result["accuracy"]}
    if ctx.cfg.task.eval_reward:
        out["eval/reward_mean"] = result["reward_mean"]
    if ctx.reasoning is not None:
        out.update(ctx.reasoning.of_eval(ctx.task.eval, result, "eval/reasoning/"))
    return out
