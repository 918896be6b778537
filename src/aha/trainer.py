"""The RL loop (GRPO, PPO, RLOO, REINFORCE++), top to bottom.

    prompts ─► rollout (old policy samples G completions each) ─► rewards
            ─► no-grad scoring: old policy, reference, critic values
            ─► advantages: group-relative (GRPO), leave-one-out (RLOO), whitened returns (REINFORCE++), GAE (PPO)
            ─► μ passes × minibatches: clipped ratio vs old policy (+ β·KL in the loss for GRPO; in the reward for
               the others) (+ clipped value loss) (− entropy bonus) ─► backprop + step
            ─► refresh old policy ─► log / eval / checkpoint ─► repeat

Each phase below is marked by a banner; the maths lives in ``aha.algos`` as pure functions, the critic in
``aha.critic``.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from aha.algos.advantages import compute_advantages, explained_variance, zero_std_groups
from aha.algos.kl import kl_estimate
from aha.algos.losses import aggregate_loss, approx_kl, clipped_surrogate, clipped_value_loss, masked_mean
from aha.checkpoint import clear_run, list_checkpoints, resume_from, save_checkpoint, training_state
from aha.config import RunConfig, save_config
from aha.critic import build_critic, policy_forward
from aha.data.templates import render_prompt
from aha.evaluate import columns_of, evaluate
from aha.guard import Guard, check_guard_config  # [guard]
from aha.models import reference_model
from aha.rewards import compute_rewards, resolve_reward
from aha.rollout import Rollouts, SamplingParams, pack_rollouts
from aha.rollout.hf import HFEngine
from aha.runtime import (PromptSampler, TrainingError, autocast, compiled_sampler, lean_activations, make_optimizer,
                         prepare, set_attention, training_attention)
from aha.track.metrics import MetricsLogger


def train_rl(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict:
    """Run the RL algorithm ``cfg.rl.algo`` as configured, writing everything to ``run_dir``.
    Returns the last logged metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rl, ro, tr = cfg.rl, cfg.rollout, cfg.train

    # ============================================================ dataset, models, engine
    device, amp, task, policy, tok, template = prepare(cfg)
    if compiled_sampler(ro.compile, device, cfg.model.lora.enabled):
        from aha.rollout.compiled import CompiledEngine  # a compiled bf16 copy of the policy samples

        engine = CompiledEngine(policy, tok, device, amp, fallback=ro.compile == "auto")  # see its docstring
    else:
        engine = HFEngine(policy, tok, device, amp)  # samples with the model's own attention kernel
    set_attention([policy], training_attention(tr.attention, device))  # the reference and critic copies inherit it
    reward_fns = [(r.name, task.rewards.get(r.name) or resolve_reward(r.name), r.weight) for r in cfg.rewards]
    sampling = SamplingParams(ro.temperature, ro.top_p, ro.max_new_tokens, list(ro.stop), min_new_tokens=ro.min_new_tokens)
    updates = rl.mu * rl.num_minibatches  # optimizer steps per batch of rollouts
    kl_in_reward = rl.algo != "grpo"  # GRPO keeps β·KL in the loss; RLOO, REINFORCE++ and PPO put it in the reward
    sampler = PromptSampler(len(task.train), tr.seed)
    # [guard] reward-hacking guard (aha.guard): it needs KL to the reference every step, even at β = 0
    guard = Guard(cfg.guard) if cfg.guard.enabled else None
    if guard is not None and (problem := check_guard_config(cfg)):
        raise TrainingError(problem)
    best_state = None  # [guard] a CPU copy of the best step's weights, the rollback target

    start_step = 0
    ckpts = list_checkpoints(run_dir) if resume else []
    if resume and not ckpts:
        raise TrainingError(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'}")
    # the reference is the policy RL starts from, so it is built before a checkpoint's weights are loaded
    # (on resume the deterministic warm-up is replayed only when the reference needs it)
    if cfg.sft.warmup_steps and (not ckpts or (rl.beta > 0 and not cfg.model.lora.enabled)):
        from aha.sft import sft_warmup  # optional: imitate reference answers first (see sft.warmup_steps)

        sft_warmup(policy, tok, task.train, template, cfg, device, amp)
    # frozen copy of the policy RL starts from ([guard]: also at β = 0, then for measuring KL only, not in the loss)
    ref = reference_model(policy, rl.beta if guard is None else max(rl.beta, 1.0), cfg.model.lora.enabled)
    critic = build_critic(cfg, policy, device)  # PPO's value model; None for the critic-free algorithms
    set_attention([critic.trunk if critic is not None else None], training_attention(tr.attention, device))
    optimizer, scheduler = make_optimizer(policy, tr, tr.steps * updates, critic, cfg.critic.lr)
    if ckpts:
        start_step = resume_from(ckpts[-1], policy, optimizer, scheduler, sampler, critic)
        print(f"resumed from {ckpts[-1]} (step {start_step})")
    engine.update_weights()  # a sampler with its own copy (rollout.compile) starts from the weights RL starts from
    if not ckpts:  # a fresh start: nothing of an earlier run in run_dir may mix with this one (the CLI asks first)
        clear_run(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    logger = MetricsLogger(run_dir, cfg.log.tensorboard, cfg.log.wandb, cfg.log.wandb_project,
                           cfg.model_dump(mode="json"), resume_step=start_step if ckpts else None)

    def run_eval() -> dict:
        result = evaluate(engine, tok, task, task.eval, template, ro.max_new_tokens)
        return {"eval/accuracy": result["accuracy"]}

    def eval_due(step: int) -> bool:
        return bool(cfg.log.eval_every) and (step % cfg.log.eval_every == 0 or step == tr.steps)

    def save_if_due(step: int) -> None:
        if (cfg.log.save_every and step % cfg.log.save_every == 0) or step == tr.steps:
            save_checkpoint(run_dir, step, policy, tok, training_state(optimizer, scheduler, sampler, critic),
                            cfg.log.keep_checkpoints)

    last: dict = {}
    if start_step == 0 and cfg.log.eval_every:
        last = run_eval()
        logger.log(0, last)
    bar = tqdm(range(start_step + 1, tr.steps + 1), desc=rl.algo, disable=not cfg.log.progress, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()

        # ============================================================ rollout: G samples per prompt
        rows, roll, rewards, per_fn, texts_all, n_skipped = [], None, [], {}, [], 0
        kept_groups, rounds, zero_std_frac = 0, 0, 0.0
        while True:
            new_rows = [task.train[i] for i in sampler.take(rl.prompts_per_step)]
            prompt_ids = [render_prompt(r["prompt"], tok, template) for r in new_rows]
            new_roll = engine.generate(prompt_ids, ro.group_size, sampling)
            texts = [tok.decode(c, skip_special_tokens=True) for c in new_roll.completion_ids]

            # ======================================================== rewards
            new_rewards, new_per_fn, skipped = compute_rewards(
                reward_fns, [r["prompt"] for r in new_rows for _ in range(ro.group_size)], texts,
                columns_of(new_rows, ro.group_size), on_error=rl.reward_on_error,
                completion_ids=new_roll.completion_ids, max_completion_length=ro.max_new_tokens)
            n_skipped += skipped
            flat = torch.tensor(new_rewards, dtype=torch.float32)
            zero = zero_std_groups(flat, ro.group_size)
            if rounds == 0:
                zero_std_frac = zero.float().mean().item()
            # DAPO dynamic sampling: keep only groups that carry a learning signal, sample more if short
            keep = ~zero if rl.dynamic_sampling else torch.ones_like(zero)
            rows, roll, rewards, per_fn, texts_all = _merge(
                rows, roll, rewards, per_fn, new_rows, new_roll, new_rewards, new_per_fn, texts, keep, ro.group_size,
                texts_all)
            kept_groups = len(rows)
            rounds += 1
            if not rl.dynamic_sampling or kept_groups >= rl.prompts_per_step or rounds > rl.max_resample_rounds:
                break
        t_rollout = time.perf_counter() - t0
        if kept_groups == 0:  # every group agreed: nothing to learn from this step (eval and save still run when due)
            last = {"reward/mean": float(torch.tensor(new_rewards).mean()), "frac_reward_zero_std": zero_std_frac,
                    "dynamic_sampling/rounds": rounds}
            if eval_due(step):
                last.update(run_eval())
            logger.log(step, last)
            save_if_due(step)
            continue
        rows, roll = rows[: rl.prompts_per_step], _take(roll, rl.prompts_per_step * ro.group_size)
        rewards_t = torch.tensor(rewards[: len(roll)], dtype=torch.float32)
        texts_all = texts_all[: len(roll)]

        # ============================================================ score the batch (no grad): old policy, reference, critic
        t1 = time.perf_counter()
        batch = pack_rollouts(roll, tok.pad_token_id, device)
        if rl.mask_truncated:
            batch["mask"] *= batch["truncated"].logical_not().unsqueeze(-1).to(batch["mask"].dtype)
        mask, n_seq = batch["mask"], len(roll)
        n_tok = mask.sum().clamp(min=1).item()
        micro = _micro_batches(n_seq, tr.micro_batch_size)
        old_logp = batch["sampler_logp"]
        need_old = updates > 1 or (kl_in_reward and rl.beta > 0)  # on-policy μ = 1 needs no old logprobs
        recompute = need_old and (rl.old_logprobs == "recompute" or (rl.old_logprobs == "auto" and amp is not None))
        old_values = None
        if recompute or critic is not None:
            logp_new, old_values = _no_grad_pass(policy, critic, batch, micro, ro.temperature, device, amp, logprobs=recompute)
            old_logp = logp_new if recompute else old_logp
        ref_logp, kl_tokens = None, None
        if rl.beta > 0 or guard is not None:  # [guard]
            ref_ctx = policy.disable_adapter() if ref is None else contextlib.nullcontext()
            with ref_ctx:
                ref_logp, _ = _no_grad_pass(ref if ref is not None else policy, None, batch, micro, ro.temperature, device, amp)
            if kl_in_reward and rl.beta > 0:  # [guard] β = 0: measured below, not in the reward
                kl_tokens = kl_estimate(old_logp, ref_logp, rl.kl_estimator)

        # ============================================================ advantages (grpo/rloo/reinforce++: no critic; ppo: GAE)
        advantages, returns = compute_advantages(
            rl.algo, rewards_t.to(device), mask, ro.group_size, kl=kl_tokens, beta=rl.beta, values=old_values,
            gamma=rl.gamma, lam=rl.lam, scale_rewards=rl.scale_rewards, whiten_advantages=rl.whiten_advantages)

        # ============================================================ update: μ passes × minibatches, one optimizer step each
        stats = dict.fromkeys(["loss/policy", "kl", "clip_ratio", "entropy", "grad_norm", "approx_kl"], 0.0)
        if critic is not None:
            stats.update(dict.fromkeys(["loss/value", "value/clip_ratio", "value/grad_norm"], 0.0))
        for it in range(rl.mu):
            for mb_rows in _minibatches(n_seq, rl.num_minibatches, device):
                optimizer.zero_grad(set_to_none=True)
                mb_seq, mb_tok = len(mb_rows), mask[mb_rows].sum().clamp(min=1).item()
                for rows_idx in mb_rows.split(tr.micro_batch_size):
                    mb = {k: v[rows_idx] for k, v in batch.items()}
                    w = len(rows_idx) / n_seq / rl.mu  # this micro-batch's share of the step's metrics
                    with autocast(device, amp):
                        logp, entropy, values = policy_forward(
                            policy, critic, mb["input_ids"], mb["attention_mask"], mask.shape[1], ro.temperature,
                            "grad" if rl.entropy_coef > 0 else ("detached" if it == 0 else "none"),
                            lean=lean_activations(cfg.model.lean_activations, policy, device, mb["input_ids"].numel(), amp))
                    logp = logp.float()
                    # exactly on-policy (one update per batch): π_old = π_θ, the ratio is 1 and only its gradient matters
                    mb_old = logp.detach() if updates == 1 else old_logp[rows_idx]
                    per_token, clipped = clipped_surrogate(logp, mb_old, advantages[rows_idx], mb["mask"], rl.epsilon_low,
                                                           rl.epsilon_high, rl.importance_sampling_level)
                    pg_loss = aggregate_loss(per_token, mb["mask"], rl.loss_type, ro.max_new_tokens, mb_seq, mb_tok)
                    loss = pg_loss
                    if ref_logp is not None and not kl_in_reward and rl.beta > 0:  # GRPO: β·KL in the loss
                        kl = kl_estimate(logp, ref_logp[rows_idx], rl.kl_estimator)
                        loss = aggregate_loss(per_token + rl.beta * kl, mb["mask"], rl.loss_type, ro.max_new_tokens, mb_seq, mb_tok)
                        stats["kl"] += masked_mean(kl.detach(), mb["mask"]).item() * w
                    if rl.entropy_coef > 0:
                        loss = loss - rl.entropy_coef * aggregate_loss(entropy, mb["mask"], "dapo", 0, mb_seq, mb_tok)
                    if critic is not None:
                        v_loss, v_clipped = clipped_value_loss(values, old_values[rows_idx], returns[rows_idx], cfg.critic.clip_range)
                        v_loss = aggregate_loss(v_loss, mb["mask"], "dapo", 0, mb_seq, mb_tok)
                        loss = loss + cfg.critic.vf_coef * v_loss
                        stats["loss/value"] += v_loss.item() / updates  # micro-batch shares sum to the minibatch's loss
                        stats["value/clip_ratio"] += masked_mean(v_clipped.float(), mb["mask"]).item() * w
                    if not torch.isfinite(loss):
                        done = list_checkpoints(run_dir)
                        raise TrainingError(
                            f"loss became {loss.item()} at step {step} (pass {it + 1}): try a lower train.lr or check the "
                            f"rewards; last intact checkpoint: {done[-1] if done else 'none'}")
                    loss.backward()
                    stats["loss/policy"] += pg_loss.item() / updates
                    stats["clip_ratio"] += masked_mean(clipped.float(), mb["mask"]).item() * w
                    stats["approx_kl"] += approx_kl(logp, mb_old, mb["mask"]) * w
                    if entropy is not None and it == 0:
                        stats["entropy"] += (entropy.detach() * mb["mask"]).sum().item() / n_tok
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), tr.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    raise TrainingError(f"gradient norm became {grad_norm.item()} at step {step}: try a lower train.lr")
                stats["grad_norm"] += grad_norm.item() / updates
                if critic is not None:
                    stats["value/grad_norm"] += torch.nn.utils.clip_grad_norm_(critic.parameters(), tr.max_grad_norm).item() / updates
                optimizer.step()
                scheduler.step()
        if device.type == "cuda":  # kernels run asynchronously: the update ends when they have
            torch.cuda.synchronize(device)
        t_train = time.perf_counter() - t1
        if kl_tokens is not None:
            stats["kl"] = masked_mean(kl_tokens, mask).item()
        elif ref_logp is not None and rl.beta == 0:  # [guard] KL of the sampled batch, measured only
            stats["kl"] = masked_mean(kl_estimate(old_logp, ref_logp, rl.kl_estimator), mask).item()
        if critic is not None:
            stats["value/mean"] = masked_mean(old_values, mask).item()
            stats["value/explained_variance"] = explained_variance(old_values, returns, mask)

        # ============================================================ refresh the old policy
        engine.update_weights()  # in-process engine shares the weights: the new policy samples next step

        # ============================================================ log / eval / checkpoint
        lengths = torch.tensor([len(c) for c in roll.completion_ids], dtype=torch.float32)
        metrics = {
            "reward/mean": rewards_t.mean().item(), "reward/std": rewards_t.std().item() if len(rewards_t) > 1 else 0.0,
            **{f"reward/{name}/mean": _mean_not_none(v[: len(roll)]) for name, v in per_fn.items()},
            # [guard] a reward's own batch statistics (e.g. the rm: reward's ensemble_std)
            **{f"reward/{name}/{k}": v for name, fn, _ in reward_fns for k, v in (getattr(fn, "last_metrics", None) or {}).items()},
            "completions/mean_length": lengths.mean().item(), "completions/max_length": lengths.max().item(),
            "completions/clipped_ratio": batch["truncated"].float().mean().item(),
            "frac_reward_zero_std": zero_std_frac, **stats, "lr": scheduler.get_last_lr()[0],
            "time/rollout_s": t_rollout, "time/train_s": t_train, "time/step_s": time.perf_counter() - t0,
            "throughput/tokens_per_s": lengths.sum().item() / max(t_rollout, 1e-9),
        }
        if rl.beta == 0 and guard is None:  # [guard]
            metrics.pop("kl")
        if rl.dynamic_sampling:
            metrics["dynamic_sampling/rounds"] = rounds
        if n_skipped:
            metrics["reward/skipped_samples"] = n_skipped
        if eval_due(step):
            metrics.update(run_eval())
        decision = guard.observe(step, metrics) if guard is not None else None  # [guard]
        if decision is not None:
            metrics.update(decision.metrics)
        logger.log(step, metrics)
        if cfg.log.samples_per_step:
            logger.log_samples([
                {"step": step, "prompt": str(rows[i // ro.group_size]["prompt"]), "completion": texts_all[i],
                 "reward": rewards_t[i].item(), "rewards": {n: v[i] for n, v in per_fn.items()},
                 "answer": rows[i // ro.group_size].get("answer")}
                for i in range(min(cfg.log.samples_per_step, len(roll)))])
        last = metrics
        bar.set_postfix({"reward": f"{metrics['reward/mean']:.3f}", "s/step": f"{metrics['time/step_s']:.2f}",
                         **({"acc": f"{metrics['eval/accuracy']:.3f}"} if "eval/accuracy" in metrics else {})})
        # [guard] keep the best weights (rollback target); on a trigger say why, restore them if asked, and stop
        if decision is not None and decision.new_best and cfg.guard.action == "rollback":
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in policy.state_dict().items()}
        if decision is not None and decision.action != "continue":
            print(f"guard: step {step}: {decision.action}: {decision.reason}")
            if decision.action == "rollback" and best_state is not None:
                policy.load_state_dict(best_state)
                engine.update_weights()
            (run_dir / "guard.json").write_text(json.dumps(
                {"step": step, "action": decision.action, "reason": decision.reason, "best_step": decision.best_step,
                 "stop_reason": decision.metrics.get("guard/stop_reason")}, indent=2))
            save_checkpoint(run_dir, step, policy, tok, training_state(optimizer, scheduler, sampler, critic),
                            cfg.log.keep_checkpoints)
            break
        save_if_due(step)
    bar.close()
    logger.close()
    if cfg.log.report:
        from aha.track.report import write_report

        write_report(run_dir)
    return last


# ----------------------------------------------------------------------------- batch plumbing


def _merge(rows, roll, rewards, per_fn, new_rows, new_roll: Rollouts, new_rewards, new_per_fn, texts, keep, G, texts_all):
    """Append the kept groups of a sampling round to what earlier rounds kept."""
    idx = [i for g, k in enumerate(keep.tolist()) if k for i in range(g * G, (g + 1) * G)]
    rows = rows + [r for r, k in zip(new_rows, keep.tolist()) if k]
    picked = Rollouts(*[[getattr(new_roll, f)[i] for i in idx] for f in ("prompt_ids", "completion_ids", "logprobs", "finish_reasons")])
    roll = picked if roll is None else Rollouts(*[getattr(roll, f) + getattr(picked, f) for f in
                                                  ("prompt_ids", "completion_ids", "logprobs", "finish_reasons")])
    rewards = rewards + [new_rewards[i] for i in idx]
    per_fn = {n: per_fn.get(n, []) + [v[i] for i in idx] for n, v in new_per_fn.items()}
    texts_all = texts_all + [texts[i] for i in idx]
    return rows, roll, rewards, per_fn, texts_all


def _take(roll: Rollouts, n: int) -> Rollouts:
    return Rollouts(roll.prompt_ids[:n], roll.completion_ids[:n], roll.logprobs[:n], roll.finish_reasons[:n])


def _micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _minibatches(n: int, k: int, device) -> list[torch.Tensor]:
    """Row indices of ``k`` minibatches covering the batch once; shuffled when there is more than one."""
    order = torch.randperm(n) if k > 1 else torch.arange(n)
    return [chunk.to(device) for chunk in order.tensor_split(k) if len(chunk)]


@torch.no_grad()
def _no_grad_pass(model, critic, batch, micro, temperature, device, amp, logprobs: bool = True):
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


def _mean_not_none(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


train_grpo = train_rl  # the name the first releases used
