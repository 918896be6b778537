"""The phases of one RL step, each a function of the parts it uses (:mod:`aha.rl.parts`) and the batch:

collect     ─ rollout (G samples per prompt) + rewards (+ DAPO dynamic resampling)
score       ─ no-grad passes: old policy, reference, critic values
advantages  ─ the estimator rl.algo names (aha.algos.advantages)
update      ─ μ passes × minibatches, one optimizer step each (aha.rl.optimize)
sync        ─ the engine samples from the new weights
step_metrics / log_samples
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, cast

import torch

from aha.algos.advantages import explained_variance, zero_std_groups
from aha.algos.kl import kl_estimate
from aha.algos.losses import masked_mean
from aha.data.templates import render_prompt
from aha.env import episode_metrics
from aha.guard import rollback_reach
from aha.modeling.options import autocast
from aha.rl.batch import RolloutBatch
from aha.rl.forward import policy_forward
from aha.rl.optimize import OptimizerStep
from aha.rl.parts import Experience, GuardPart, Policy, RLParts
from aha.rollout import pack_rollouts
from aha.rollout.episodes import run_episodes
from aha.rollout.scoring import Scores
from aha.run import Run
from aha.track.reasoning import ReasoningMeter, reasoning_metrics

if TYPE_CHECKING:
    from aha.rollout.ray import RayEngine

# ============================================================ collect


def sample(exp: Experience, rows: list[dict]) -> tuple[RolloutBatch, Scores]:
    """G completions for each row, decoded and rewarded (aha.rollout.scoring); returns the batch and its scores
    (with how many (function, sample) pairs a failing reward skipped, and each reward's ``last_metrics``).
    With an environment (``env``), G episodes for each row, played turn by turn (:mod:`aha.rollout.episodes`)."""
    G = exp.group_size
    if exp.env is not None:
        return play(exp, rows)
    prompt_ids = [render_prompt(r["prompt"], exp.tokenizer, exp.template, exp.response_prefix) for r in rows]
    if exp.scorer is None:  # distributed.rewards: workers — each Ray rollout worker rewards its shard beside it
        roll, scores = cast("RayEngine", exp.engine).generate_scored(prompt_ids, rows, G, exp.sampling)
    else:
        roll = exp.engine.generate(prompt_ids, G, exp.sampling)
        scores = exp.scorer(rows, roll)
    return RolloutBatch(G, rows, roll, scores.texts, scores.rewards, scores.per_fn), scores


def play(exp: Experience, rows: list[dict]) -> tuple[RolloutBatch, Scores]:
    """G episodes for each row, rewarded with their transcripts and ``environments=`` (TRL's reward signature).
    The environments' reset seeds are drawn from the global RNG (a checkpoint keeps its state: resume replays)."""
    assert exp.env is not None  # (called with an environment only)
    G = exp.group_size
    if exp.remote_episodes:  # Ray rollout workers: each plays and rewards its shard's episodes in its own environment
        roll, scores, transcripts, stats = cast("RayEngine", exp.engine).play_scored(rows, G, exp.sampling)
        batch = RolloutBatch(G, rows, roll, scores.texts, scores.rewards, scores.per_fn, stats, transcripts)
        return batch, scores
    seeds = torch.randint(0, 2**31 - 1, (len(rows) * G,)).tolist()
    played = run_episodes(
        exp.engine, exp.env, rows, G, exp.sampling, exp.max_turns, exp.max_episode_tokens, seeds, exp.env_workers
    )
    assert exp.scorer is not None  # (episodes are rewarded in this process)
    envs = [e.env for e in played.episodes]
    scores = exp.scorer(rows, played.rollouts, transcripts=played.transcripts, environments=envs)
    batch = RolloutBatch(
        G, rows, played.rollouts, scores.texts, scores.rewards, scores.per_fn, played.episodes, played.transcripts
    )
    return batch, scores


def collect(exp: Experience) -> tuple[RolloutBatch | None, dict]:
    """``rl.prompts_per_step`` groups of rewarded completions. With DAPO's dynamic sampling only groups whose
    rewards differ are kept, and more prompts are sampled until enough are (at most ``rl.max_resample_rounds``
    more rounds). Returns ``(batch or None when no group was kept, info)``; ``info`` has ``rounds``,
    ``zero_std_frac`` (of the first round), ``skipped``, and of the last round ``last_reward_mean`` and
    ``reward_metrics`` (each reward's ``last_metrics``)."""
    G, n = exp.group_size, exp.prompts_per_step
    info: dict[str, Any]
    kept, info = None, {"rounds": 0, "skipped": 0}
    while True:
        fresh, scores = sample(exp, [exp.rows[i] for i in exp.sampler.take(n)])
        info["skipped"] += scores.skipped
        info["reward_metrics"] = scores.metrics
        zero = zero_std_groups(torch.tensor(fresh.rewards, dtype=torch.float32), G)
        if info["rounds"] == 0:
            info["zero_std_frac"] = zero.float().mean().item()
        keep = (~zero if exp.dynamic_sampling else torch.ones_like(zero)).tolist()
        kept = fresh.select(keep) if kept is None else kept.concat(fresh.select(keep))
        info["rounds"] += 1
        if not exp.dynamic_sampling or kept.n_groups >= n or info["rounds"] > exp.max_resample_rounds:
            break
    info["last_reward_mean"] = float(torch.tensor(fresh.rewards).mean())
    if kept.n_groups == 0:  # every group agreed: nothing to learn from this step
        return None, info
    return kept.head(n), info


# ============================================================ score (no grad)


def micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def no_grad_pass(
    model, critic, batch: dict, micro: list[slice], temperature: float, device, amp, logprobs: bool = True
):
    """``(logp [B, C] or None, values [B, C] or None)`` of the whole batch, micro-batch by micro-batch.
    ``logprobs=False`` skips the policy's pass unless a ``head`` critic needs its hidden states."""
    C = batch["mask"].shape[1]
    logps, values = [], []
    for sl in micro:
        ids, attn = batch["input_ids"][sl], batch["attention_mask"][sl]
        with autocast(device, amp):
            if logprobs or (critic is not None and critic.shared):
                logp, _, v = policy_forward(model, critic, ids, attn, C, temperature)
                logps.append(logp.float())
            else:
                v = critic(ids, attn, C)
        if critic is not None:
            values.append(v.float())
    return (torch.cat(logps) if logps else None), (torch.cat(values) if values else None)


def score(opt: OptimizerStep, policy: Policy, batch: RolloutBatch, exact: bool, measure_kl: bool = False) -> None:
    """Pack the batch into tensors and run the no-grad passes it needs: the old policy's logprobs (when μ > 1 or
    KL goes into the reward, and the engine's own are not ``exact``), the critic's values, the reference's logprobs
    (β > 0, or ``measure_kl``: the guard's) and, for the estimators that put β·KL into the reward, the per-token KL."""
    st, rl = opt.settings, opt.settings.rl
    T, device, amp = st.temperature, policy.device, policy.amp
    t = pack_rollouts(batch.rollouts, policy.tokenizer.pad_token_id, device)
    if rl.mask_truncated:
        t["mask"] *= t["truncated"].logical_not().unsqueeze(-1).to(t["mask"].dtype)
    micro = micro_batches(len(batch), st.micro_batch_size)
    old_logp = t["sampler_logp"]
    need_old = opt.updates > 1 or (opt.estimator.kl_in_reward and rl.beta > 0)  # on-policy μ = 1 needs none
    recompute = need_old and (rl.old_logprobs == "recompute" or (rl.old_logprobs == "auto" and not exact))
    if recompute or opt.critic is not None:
        logp_new, batch.values = no_grad_pass(policy.model, opt.critic, t, micro, T, device, amp, logprobs=recompute)
        old_logp = logp_new if recompute else old_logp
    if rl.beta > 0 or measure_kl:  # (the guard measures KL to the reference even at β = 0)
        model, adapters_off = policy.reference()
        with adapters_off:
            batch.ref_logp, _ = no_grad_pass(model, None, t, micro, T, device, amp)
        if opt.estimator.kl_in_reward and rl.beta > 0:
            batch.kl = kl_estimate(old_logp, batch.ref_logp, rl.kl_estimator)
    batch.tensors, batch.old_logp = t, old_logp


# ============================================================ advantages


def advantages(opt: OptimizerStep, batch: RolloutBatch) -> None:
    """The estimator ``rl.algo`` names: group-relative (GRPO), leave-one-out (RLOO), whitened returns (REINFORCE++),
    GAE over the critic's values (PPO)."""
    rl = opt.settings.rl
    batch.advantages, batch.returns = opt.estimator.fn(
        torch.tensor(batch.rewards, dtype=torch.float32).to(opt.device),
        batch.mask,
        batch.group_size,
        kl=batch.kl if rl.beta > 0 else None,
        beta=rl.beta,
        values=batch.values,
        gamma=rl.gamma,
        lam=rl.lam,
        scale_rewards=rl.scale_rewards,
        whiten_advantages=rl.whiten_advantages,
    )


# ============================================================ sync


def sync(policy: Policy, exp: Experience, guard: GuardPart | None = None) -> int:
    """The engine samples from the policy's new weights (free in-process: it shares them); the weights version.
    Under a rolling-back guard a copy of them is kept: they may be the best step's, the rollback target."""
    if guard is not None and guard.recent_weights is not None:
        guard.recent_weights.append(trainable_state(policy.model))
    return exp.engine.sync(policy.model)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the parameters training changes (all of them, or the LoRA adapters)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.named_parameters() if v.requires_grad}


# ============================================================ log


def step_metrics(parts: RLParts, batch: RolloutBatch, info: dict, stats: dict, times: dict) -> dict:
    """The step's metrics: rewards, lengths, the update's statistics, the critic's fit, times."""
    rewards = torch.tensor(batch.rewards, dtype=torch.float32)
    lengths = torch.tensor([len(c) for c in batch.rollouts.completion_ids], dtype=torch.float32)
    episode_tokens = None
    if batch.rollouts.completion_mask is not None:  # multi-turn: the model's own tokens; the episode's apart
        episode_tokens = lengths
        lengths = torch.tensor([sum(m) for m in batch.rollouts.completion_mask], dtype=torch.float32)
    mask = batch.mask
    if batch.kl is not None:
        stats["kl"] = masked_mean(batch.kl, mask).item()
    elif batch.ref_logp is not None and parts.beta == 0:  # the guard's: KL of the sampled batch, measured only
        kl_est = parts.optim.settings.rl.kl_estimator
        stats["kl"] = masked_mean(kl_estimate(cast(torch.Tensor, batch.old_logp), batch.ref_logp, kl_est), mask).item()
    if parts.optim.critic is not None:
        values, returns = cast(torch.Tensor, batch.values), cast(torch.Tensor, batch.returns)  # (PPO: set by prepare)
        stats["value/mean"] = masked_mean(values, mask).item()
        stats["value/explained_variance"] = explained_variance(values, returns, mask)
    metrics = {
        "reward/mean": rewards.mean().item(),
        "reward/std": rewards.std().item() if len(rewards) > 1 else 0.0,
        **{f"reward/{name}/mean": _mean_not_none(v) for name, v in batch.per_fn.items()},
        # a reward's own statistics of its last call (e.g. the rm: reward's ensemble_std, the code reward's timeouts)
        **{f"reward/{name}/{k}": v for name, kept in info["reward_metrics"].items() for k, v in kept.items()},
        "completions/mean_length": lengths.mean().item(),
        "completions/max_length": lengths.max().item(),
        "completions/clipped_ratio": batch.tensors["truncated"].float().mean().item(),
        "frac_reward_zero_std": info["zero_std_frac"],
        **stats,
        "lr": parts.optim.scheduler.get_last_lr()[0],
        "time/rollout_s": times["rollout"],
        "time/train_s": times["train"],
        "time/step_s": times["step"],
        # (asynchronous rollouts: the workers' own sampling time; time/rollout_s is then the trainer's wait)
        "throughput/tokens_per_s": lengths.sum().item() / max(info.get("sampling_s") or times["rollout"], 1e-9),
    }
    if parts.beta == 0 and parts.guard is None:
        metrics.pop("kl")
    if parts.experience.dynamic_sampling:
        metrics["dynamic_sampling/rounds"] = info["rounds"]
    metrics.update(info.get("async", {}))  # rollout.asynchronous: staleness, idle times
    if info["skipped"]:
        metrics["reward/skipped_samples"] = info["skipped"]
    if batch.episodes is not None and episode_tokens is not None:
        metrics.update(episode_metrics(batch.episodes))
        turns = [sum(m["role"] == "assistant" for m in t) for t in batch.transcripts or []]
        metrics["env/turns"] = sum(turns) / max(1, len(turns))  # the model's turns, a last one cut by a cap too
        metrics["env/episode_tokens"] = episode_tokens.mean().item()
        metrics["env/truncated"] = batch.tensors["truncated"].float().mean().item()
    engine = parts.experience.engine
    if hasattr(engine, "restarts"):  # remote rollout workers (Ray): restarts so far
        metrics["distributed/worker_restarts"] = engine.restarts
    if parts.evaluation.reasoning is not None:
        metrics.update(reasoning(parts.evaluation.reasoning, batch, lengths.tolist()))
    return metrics


def reasoning(meter: ReasoningMeter, batch: RolloutBatch, lengths: list) -> dict:
    """The batch's reasoning metrics (format, strict/lenient accuracy, reflection, lengths; aha.track.reasoning);
    the verdicts stay on the batch for :func:`log_samples`."""
    G = batch.group_size
    batch.judgements = meter.judge(
        [batch.rows[i // G]["prompt"] for i in range(len(batch))],
        batch.texts if batch.transcripts is None else batch.transcripts,  # episodes: the model's turns apart
        [batch.rows[i // G].get("answer") for i in range(len(batch))],
    )
    return reasoning_metrics(batch.judgements, lengths)


def log_samples(run: Run, n: int, step: int, batch: RolloutBatch) -> None:
    """The first ``n`` (``log.samples_per_step``) completions to samples.jsonl, and with the reasoning metrics on,
    every aha moment of the batch too (marked ``aha``: the phrase, the answer before it and the right one after)."""
    G = batch.group_size
    ahas = [i for i, j in enumerate(batch.judgements or []) if j.aha is not None]
    picked = sorted(set(range(min(n, len(batch)))) | set(ahas))
    if picked:
        rewards = torch.tensor(batch.rewards, dtype=torch.float32)  # as the advantages saw them
        assert run.logger is not None  # opened by run.begin
        run.logger.log_samples(
            [
                {
                    "step": step,
                    "prompt": batch.rows[i // G]["prompt"],
                    # the text, or a multi-turn episode's transcript (chat messages with their roles)
                    "completion": batch.texts[i] if batch.transcripts is None else batch.transcripts[i],
                    "reward": rewards[i].item(),
                    "rewards": {name: v[i] for name, v in batch.per_fn.items()},
                    "answer": batch.rows[i // G].get("answer"),
                    **({"aha": asdict(cast(list, batch.judgements)[i].aha)} if i in ahas else {}),
                }
                for i in picked
            ]
        )


def _mean_not_none(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def guard_check(guard: GuardPart | None, step: int, metrics: dict):
    """The guard's decision on this step's metrics (which it extends with its own), or None without a guard."""
    if guard is None:
        return None
    decision = guard.guard.observe(step, metrics)
    metrics.update(decision.metrics)
    return decision


def guard_act(parts: RLParts, step: int, decision) -> bool:
    """Keep the best weights (the rollback target); on a trigger say why, restore them if asked, write
    RUN_DIR/guard.json and a checkpoint. Returns True when the run must stop."""
    import json

    guard = parts.guard
    if decision is None or guard is None:
        return False
    if decision.new_best and guard.recent_weights is not None:
        # the best step is judged by a moving average of the guard.window last steps' samples: keep the weights
        # that sampled the middle of that window (the newest copy is this step's update, which sampled nothing yet)
        back = min(rollback_reach(guard.window), len(guard.recent_weights))
        guard.best_state = guard.recent_weights[-back]
    if decision.action == "continue":
        return False
    print(f"guard: step {step}: {decision.action}: {decision.reason}")
    if decision.action == "rollback" and guard.best_state is not None:
        with torch.no_grad():
            params = dict(parts.policy.model.named_parameters())
            for k, v in guard.best_state.items():
                params[k].copy_(v)
        sync(parts.policy, parts.experience, guard)
    (parts.run.dir / "guard.json").write_text(
        json.dumps(
            {
                "step": step,
                "action": decision.action,
                "reason": decision.reason,
                "best_step": decision.best_step,
                "stop_reason": decision.metrics.get("guard/stop_reason"),
            },
            indent=2,
        )
    )
    parts.run.save(step, parts.policy.model, parts.policy.tokenizer, parts.state())
    return True
