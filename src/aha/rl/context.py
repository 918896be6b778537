"""Everything the RL phases share for a run: the models, the engine, the rewards, the optimizer, the data order.
Built once by :func:`build_context` (the order matters: it is the order the random numbers are drawn in)."""

from __future__ import annotations

import contextlib
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch

from aha.algos.advantages import AdvantageEstimator, advantage_estimator
from aha.build import build_engine, prepare
from aha.checkpoint import resume_from, training_state
from aha.config import RunConfig
from aha.critic import Critic, build_critic
from aha.data.sampler import PromptSampler
from aha.errors import TrainingError
from aha.evaluation import eval_verifier
from aha.guard import Guard, check_guard_config, rollback_reach
from aha.modeling.options import set_attention, training_attention
from aha.models import reference_model
from aha.optim import make_optimizer
from aha.rewards import build_rewards
from aha.rewards.specs import label_map
from aha.rl.optimize import updates_per_batch
from aha.rl.ranks import TrainerGroup, start_trainers
from aha.rollout import Engine, SamplingParams
from aha.rollout.scoring import RewardRecipe, RewardScorer
from aha.run import Run
from aha.sft import imitate_answers
from aha.tasks import Task
from aha.track.reasoning import ReasoningMeter, reasoning_meter


@dataclass
class RLContext:
    cfg: RunConfig
    run: Run
    device: torch.device
    amp: torch.dtype | None  # bf16 autocast, or None = fp32
    task: Task
    policy: torch.nn.Module
    tokenizer: Any  # a transformers tokenizer
    template: str
    engine: Engine
    scorer: RewardScorer | None  # decodes and rewards the rollouts (None: the Ray rollout workers reward their own)
    sampling: SamplingParams
    sampler: PromptSampler
    estimator: AdvantageEstimator  # rl.algo
    ref: torch.nn.Module | None = None  # frozen reference (None: β = 0, or LoRA: the policy with adapters off)
    critic: Critic | None = None  # PPO's value model
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None  # the optimizer's LRScheduler (aha.optim.make_optimizer)
    eval_scorer: Callable | None = None  # what judges eval (aha.evaluation.eval_verifier)
    guard: Guard | None = None  # the reward-hacking guard (aha.guard), when guard.enabled
    best_state: dict | None = None  # the guard's rollback target: a CPU copy of the best step's trainable weights
    recent_weights: deque | None = None  # (guard.action rollback) copies of the weights the last steps sampled from
    reasoning: ReasoningMeter | None = None  # judges completions for the reasoning metrics (log.reasoning_metrics)
    trainers: TrainerGroup | None = None  # data-parallel trainer ranks 1..M−1 (distributed.trainers > 1; aha.rl.ranks)

    @property
    def updates(self) -> int:
        return updates_per_batch(self.cfg.rl)

    def reference(self):
        """``(model, context)`` that computes the reference's logprobs: the frozen copy, or under LoRA the policy
        with its adapters switched off."""
        if self.ref is not None:
            return self.ref, contextlib.nullcontext()
        return self.policy, cast(Any, self.policy).disable_adapter()  # (peft)

    def state(self) -> dict:
        """What a checkpoint holds besides the policy's weights."""
        return training_state(self.optimizer, self.scheduler, self.sampler, self.critic)


def build_context(cfg: RunConfig, run: Run) -> RLContext:
    """Dataset, models, engine; the imitation steps, reference, critic and optimizer; a checkpoint's state on resume."""
    rl, ro, tr = cfg.rl, cfg.rollout, cfg.train
    device, amp, task, policy, tok, template = prepare(cfg)
    in_workers = cfg.distributed.backend == "ray" and cfg.distributed.rewards == "workers"  # rewards beside samples
    engine = build_engine(
        ro.engine,
        policy,
        tok,
        device,
        amp,
        ro.compile,
        cfg.model.lora.enabled,
        cfg.distributed,
        RewardRecipe.of(cfg, task) if in_workers else None,
    )
    if hasattr(engine, "close"):  # remote workers (Ray) stop with the run
        run.on_finish.append(engine.close)
    set_attention([policy], training_attention(tr.attention, device))  # the reference and critic copies inherit it
    scorer = None if in_workers else RewardScorer(cfg, tok, build_rewards(cfg, task))
    sampling = SamplingParams(
        ro.temperature, ro.top_p, ro.max_new_tokens, list(ro.stop), min_new_tokens=ro.min_new_tokens
    )
    ctx = RLContext(
        cfg,
        run,
        device,
        amp,
        task,
        policy,
        tok,
        template,
        engine,
        scorer,
        sampling,
        PromptSampler(len(task.train), tr.seed),
        advantage_estimator(rl.algo),
    )
    ctx.eval_scorer = eval_verifier(cfg, task)
    ctx.reasoning = reasoning_meter(cfg, task)
    if cfg.guard.enabled:  # it needs KL to the reference every step, even at β = 0
        if problem := check_guard_config(cfg):
            raise TrainingError(problem)
        ctx.guard = Guard(cfg.guard, label_map(cfg.rewards))
        if cfg.guard.action == "rollback":  # enough to reach back to the middle of the guard's moving average
            ctx.recent_weights = deque(maxlen=rollback_reach(cfg.guard.window))
    # the reference is the policy RL starts from (after the imitation steps, under LoRA too), so it is built before a
    # checkpoint's weights are loaded; on resume the deterministic imitation is replayed where the reference needs it,
    # and always under LoRA, where a checkpoint holds only the adapters over the imitated base weights
    lora, needs_ref = cfg.model.lora.enabled, rl.beta > 0 or ctx.guard is not None
    if cfg.sft.imitation_steps and (not run.resuming or lora or needs_ref):
        imitate_answers(policy, tok, task.train, template, cfg, device, amp)
    # frozen copy of the policy RL starts from (with the guard also at β = 0, then for measuring KL, not in the loss)
    ctx.ref = reference_model(policy, rl.beta if ctx.guard is None else max(rl.beta, 1.0), cfg.model.lora.enabled)
    if rl.importance_sampling_level == "sequence" and rl.loss_type != "grpo":
        print(
            f"note: rl.loss_type {rl.loss_type} with importance_sampling_level: sequence weighs each sequence by its "
            "length; GSPO's objective is the mean over sequences (rl.loss_type: grpo, the default at sequence level)",
            file=sys.stderr,
        )
    ctx.critic = build_critic(cfg, policy, device)  # PPO's value model; None for the critic-free algorithms
    set_attention([ctx.critic.trunk if ctx.critic is not None else None], training_attention(tr.attention, device))
    ctx.optimizer, ctx.scheduler = make_optimizer(policy, tr, tr.steps * ctx.updates, ctx.critic, cfg.critic.lr)
    return ctx


def restore(ctx: RLContext, checkpoint) -> int:
    """Load a checkpoint into the context (weights, optimizer, schedule, data order, RNG, critic); returns its step."""
    return resume_from(checkpoint, ctx.policy, ctx.optimizer, ctx.scheduler, ctx.sampler, ctx.critic)


def trainer_group(ctx: RLContext):
    """The data-parallel trainer ranks ``distributed.trainers`` > 1 asks for (:mod:`aha.rl.ranks`, which
    imports Ray), started from the context's weights and optimizer state; None for one trainer process."""
    if ctx.cfg.distributed.trainers == 1:
        return None
    return start_trainers(ctx)
