"""The RL stage (GRPO, PPO, RLOO, REINFORCE++, and any estimator registered in ``aha.algos``), top to bottom.

    prompts ─► collect: the old policy samples G completions each ─► rewards (DAPO: resample flat groups)
            ─► score (no grad): old policy, reference, critic values
            ─► advantages: group-relative (GRPO), leave-one-out (RLOO), whitened returns (REINFORCE++), GAE (PPO)
            ─► update: μ passes × minibatches: policy loss vs the old policy (+ β·KL in the loss for GRPO; in the
               reward for the others) (+ clipped value loss) (− entropy bonus) ─► backprop + step (skipped where
               the loss or gradient norm is not finite; train.max_skipped_steps in a row stop the run)
            ─► sync: the engine samples from the new weights ─► log / eval / checkpoint ─► repeat

With ``rollout.asynchronous`` the Ray workers sample the next steps' batches while this one trains (up to
``rl.max_staleness`` weight versions old; :mod:`aha.rl.asynchronous`), and each token's loss is weighted by the
truncated importance weight π_old/π_behaviour.

The phases are in :mod:`aha.rl.phases` and :mod:`aha.rl.optimize`, the data they pass in :mod:`aha.rl.batch`, the maths
in :mod:`aha.algos`, the run skeleton (resume, logging, cadence, report) in :mod:`aha.run`.
"""

from __future__ import annotations

import time
from pathlib import Path

from aha.config import RunConfig
from aha.evaluation import evaluate
from aha.rl.optimize import update
from aha.rl.parts import Evaluation, Experience, Policy, RLParts, build_parts, trainer_group
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
from aha.rollout import Engine
from aha.rollout.episodes import evaluate_episodes
from aha.run import Run


def train_rl(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict:
    """Run the RL algorithm ``cfg.rl.algo`` as configured, writing everything to ``run_dir``.
    Returns the last logged metrics."""
    run = Run(cfg, run_dir, resume, cfg.rl.algo)
    parts = build_parts(cfg, run)  # policy, experience, optimizer step, guard, evaluation (aha.rl.parts)
    policy, experience, optim, guard = parts.policy, parts.experience, parts.optim, parts.guard
    start = run.begin(parts.restore, parts.task.note)
    optim.trainers = trainer_group(parts, cfg)  # distributed.trainers > 1: ranks 1..M−1 join, from these weights
    sync(policy, experience, guard)  # a sampler with its own copy (rollout.compile) starts from RL's first weights
    ahead = parts.ahead  # rollout.asynchronous: the workers sample the next steps' batches while this one trains
    last: dict = {}
    if run.eval_due(0):
        last = run_eval(parts.evaluation, experience.engine, policy, experience)
        run.log(0, last)
    for step in run.steps(start):
        t0 = time.perf_counter()
        batch, info = collect(experience) if ahead is None else ahead.collect(step)
        t_rollout = time.perf_counter() - t0
        if batch is None:  # every group agreed: nothing to learn from this step (eval and save still run when due)
            last = {
                "reward/mean": info["last_reward_mean"],
                "frac_reward_zero_std": info["zero_std_frac"],
                "dynamic_sampling/rounds": info["rounds"],
            }
        else:
            t1 = time.perf_counter()
            # (a batch sampled ahead has an older sampler's logprobs: π_old is recomputed where μ > 1)
            exact = experience.engine.exact_logprobs and ahead is None
            score(optim, policy, batch, exact, measure_kl=guard is not None)
            advantages(optim, batch)
            stats, skipped = update(optim, batch)  # skipped: what was not finite, if an optimizer step was skipped
            times = {"rollout": t_rollout, "train": time.perf_counter() - t1}
            sync(policy, experience, guard)
            times["step"] = time.perf_counter() - t0
            last = step_metrics(parts, batch, info, stats, times) | run.count_skipped(step, skipped)
        if run.eval_due(step):
            last.update(run_eval(parts.evaluation, experience.engine, policy, experience))
        decision = guard_check(guard, step, last) if batch is not None else None  # the reward-hacking guard
        run.log(
            step,
            last,
            shown=None
            if batch is None
            else {"reward": f"{last['reward/mean']:.3f}", "s/step": f"{last['time/step_s']:.2f}"},
        )
        if batch is not None:
            log_samples(run, parts.samples_per_step, step, batch)
        run.stop_if_failing(step)  # train.max_skipped_steps skipped in a row
        if guard_act(parts, step, decision):  # stopped (rolled back to the best weights where asked)
            break
        if run.save_due(step):
            run.save(step, policy.model, policy.tokenizer, parts.state())
    return run.finish(last)


def run_eval(ev: Evaluation, engine: Engine, policy: Policy, exp: Experience | None = None) -> dict:
    """Greedy accuracy on the task's held-out rows, judged by the task's verifier or ``task.eval_reward``; with an
    environment, greedy episodes judged by the run's rewards (:func:`eval_episodes`)."""
    if exp is not None and exp.env is not None:
        return eval_episodes(ev, exp)
    result = evaluate(
        engine,
        policy.tokenizer,
        ev.task,
        ev.rows,
        policy.template,
        ev.max_new_tokens,
        scorer=ev.scorer,
        response_prefix=ev.response_prefix,
    )
    out = {"eval/accuracy": result["accuracy"]}
    if ev.reward_mean:
        out["eval/reward_mean"] = result["reward_mean"]
    if ev.reasoning is not None:
        out.update(ev.reasoning.of_eval(ev.rows, result, "eval/reasoning/"))
    return out


def eval_episodes(ev: Evaluation, exp: Experience) -> dict:
    """One greedy episode per held-out row, rewarded as training rewards them (:func:`evaluate_episodes`)."""
    assert exp.env is not None and exp.scorer is not None  # (an environment's episodes are rewarded in-process)
    result = evaluate_episodes(
        exp.engine, exp.env, exp.scorer, ev.rows, exp.sampling, exp.max_turns, exp.max_episode_tokens
    )
    return {f"eval/{k}": v for k, v in result.items()}


__all__ = ["RLParts", "build_parts", "run_eval", "train_rl"]
