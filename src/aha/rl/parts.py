"""An RL run's parts, built once at the top by :func:`build_parts`, each from its own sections of the config:

    Policy         the model, tokenizer, template, device and precision; the frozen reference   model, task, train
    Experience     engine, rewards, prompt order: groups of rewarded completions                rollout, rewards, rl
    OptimizerStep  optimizer, schedule, critic, advantage estimator, update settings            rl, train, critic
    GuardPart      the reward-hacking guard and the weights it may roll back to                 guard
    Evaluation     the held-out rows, their verifier, the reasoning meter                       task, log

Only the builder reads the whole ``RunConfig``; the phases (:mod:`aha.rl.phases`, :mod:`aha.rl.optimize`) take
the parts they use. The order of building is the order random numbers are drawn in.
"""

from __future__ import annotations

import contextlib
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch

from aha.algos.advantages import advantage_estimator
from aha.build import build_engine, precision, prepare
from aha.checkpoint import resume_from, training_state
from aha.config import RunConfig
from aha.critic import build_critic
from aha.data.sampler import PromptSampler
from aha.env import build_environment
from aha.errors import TrainingError
from aha.evaluation import eval_verifier
from aha.guard import Guard, check_guard_config, rollback_reach
from aha.modeling.options import set_attention, training_attention
from aha.models import reference_model
from aha.optim import make_optimizer
from aha.rewards import build_rewards
from aha.rewards.specs import label_map
from aha.rl.asynchronous import AsyncRollouts
from aha.rl.optimize import OptimizerStep, UpdateSettings
from aha.rl.ranks import TrainerGroup, start_trainers
from aha.rollout import Engine, SamplingParams
from aha.rollout.episodes import PYTHON_ENVS, EnvRecipe, EpisodeFormat
from aha.rollout.scoring import RewardRecipe, RewardScorer, ScoreSettings
from aha.run import Run
from aha.sft import imitate_answers
from aha.tasks import Task
from aha.track.reasoning import ReasoningMeter, reasoning_meter


@dataclass
class Policy:
    """The model RL trains, what reads and writes its text, and the frozen reference its KL is measured to."""

    model: torch.nn.Module
    tokenizer: Any  # a transformers tokenizer
    template: str
    device: torch.device
    amp: torch.dtype | None  # bf16 autocast, or None = fp32
    ref: torch.nn.Module | None = None  # frozen reference (None: β = 0, or LoRA: the policy with adapters off)

    def reference(self):
        """``(model, context)`` that computes the reference's logprobs: the frozen copy, or under LoRA the policy
        with its adapters switched off."""
        if self.ref is not None:
            return self.ref, contextlib.nullcontext()
        return self.model, cast(Any, self.model).disable_adapter()  # (peft)


@dataclass
class Experience:
    """Where the batches come from: prompts in the sampler's order, G completions each from the engine, rewarded by
    the scorer (None: the Ray rollout workers reward their own shards)."""

    engine: Engine
    scorer: RewardScorer | None
    sampling: SamplingParams
    sampler: PromptSampler
    rows: list[dict]  # the task's training rows
    tokenizer: Any
    template: str
    response_prefix: str  # task.response_prefix (e.g. '<think>': ends the prompt)
    group_size: int  # rollout.group_size
    prompts_per_step: int  # rl.prompts_per_step
    dynamic_sampling: bool = False  # rl.dynamic_sampling (DAPO)
    max_resample_rounds: int = 0  # rl.max_resample_rounds
    env: EpisodeFormat | None = None  # multi-turn episodes: the environment and how its turns become tokens
    remote_episodes: bool = False  # the Ray rollout workers play and reward the episodes (eval plays here)
    max_turns: int = 1  # env.max_turns
    max_episode_tokens: int = 0  # rollout.max_episode_tokens
    env_workers: int = 1  # env.workers


@dataclass
class GuardPart:
    """The reward-hacking guard (:mod:`aha.guard`) and, under ``guard.action: rollback``, copies of the weights the
    last steps sampled from, one of which becomes the best step's (the rollback target)."""

    guard: Guard
    window: int  # guard.window
    recent_weights: deque | None = None
    best_state: dict | None = None


@dataclass
class Evaluation:
    """Greedy accuracy on the held-out rows, judged by the task's verifier or ``task.eval_reward``."""

    rows: list[dict]
    task: Task
    scorer: Callable | None  # (aha.evaluation.eval_verifier)
    max_new_tokens: int
    response_prefix: str
    reward_mean: bool  # also log eval/reward_mean (task.eval_reward is set)
    reasoning: ReasoningMeter | None = None  # (log.reasoning_metrics)


@dataclass
class RLParts:
    run: Run
    task: Task
    policy: Policy
    experience: Experience
    optim: OptimizerStep
    evaluation: Evaluation
    guard: GuardPart | None = None
    beta: float = 0.0  # rl.beta, for the metrics
    samples_per_step: int = 0  # log.samples_per_step
    ahead: AsyncRollouts | None = None  # rollout.asynchronous: the batches the workers sample while this one trains

    def state(self) -> dict:
        """What a checkpoint holds besides the policy's weights (and the batches under way, asynchronous rollouts)."""
        state = training_state(self.optim.optimizer, self.optim.scheduler, self.experience.sampler, self.optim.critic)
        if self.ahead is not None:
            state["rollouts_ahead"] = self.ahead.state_dict()
        return state

    def restore(self, checkpoint) -> int:
        """Load a checkpoint (weights, optimizer, schedule, data order, RNG, critic, batches under way); returns its
        step."""
        opt = self.optim
        step = resume_from(
            checkpoint, self.policy.model, opt.optimizer, opt.scheduler, self.experience.sampler, opt.critic
        )
        if self.ahead is not None:
            state = torch.load(checkpoint / "trainer_state.pt", mmap=True, weights_only=False)
            self.ahead.load_state_dict(state.get("rollouts_ahead"))
        return step


def build_parts(cfg: RunConfig, run: Run) -> RLParts:
    """Dataset, models, engine; the imitation steps, reference, critic and optimizer (a checkpoint's state is loaded
    later, by :meth:`RLParts.restore`)."""
    rl, ro, tr = cfg.rl, cfg.rollout, cfg.train
    device, amp, task, model, tok, template = prepare(cfg)
    in_workers = cfg.distributed.backend == "ray" and cfg.distributed.rewards == "workers"  # rewards beside samples
    recipe = RewardRecipe.of(cfg, task) if in_workers else None
    if recipe is not None and cfg.env.enabled:  # the workers play the episodes, each in its own environment
        recipe.env = env_recipe(cfg, template)
    sampling = precision(cfg, device, model).sample  # (bf16 where it pays: aha.modeling.precision)
    engine = build_engine(
        ro.engine, model, tok, device, sampling, ro.compile, cfg.model.lora.enabled, cfg.distributed, recipe
    )
    if hasattr(engine, "close"):  # remote workers (Ray) stop with the run
        run.on_finish.append(engine.close)
    set_attention([model], training_attention(tr.attention, device))  # the reference and critic copies inherit it
    fmt = episode_format(cfg, task, tok, template)  # multi-turn episodes (env), or None
    scorer = None
    if not in_workers or fmt is not None:  # (with Ray workers and an environment: for the eval's episodes only)
        scorer = RewardScorer(ScoreSettings.of(cfg), tok, build_rewards(cfg.rewards, task, cfg.task.answer_match))
    experience = Experience(
        engine,
        scorer,
        sampler=PromptSampler(len(task.train), tr.seed),
        rows=task.train,
        tokenizer=tok,
        template=template,
        env=fmt,
        remote_episodes=in_workers and fmt is not None,
        **experience_settings(cfg),
    )
    estimator = advantage_estimator(rl.algo)
    evaluation = Evaluation(
        task.eval,
        task,
        eval_verifier(cfg.task, cfg.rewards, task),
        reasoning=reasoning_meter(cfg.log.reasoning_metrics, cfg.task, task),
        **evaluation_settings(cfg),
    )
    guard = build_guard(cfg)
    # the reference is the policy RL starts from (after the imitation steps, under LoRA too), so it is built before a
    # checkpoint's weights are loaded; on resume the deterministic imitation is replayed where the reference needs it,
    # and always under LoRA, where a checkpoint holds only the adapters over the imitated base weights
    lora, needs_ref = cfg.model.lora.enabled, rl.beta > 0 or guard is not None
    if cfg.sft.imitation_steps and (not run.resuming or lora or needs_ref):
        imitate_answers(model, tok, task.train, template, cfg.sft, tr, device, amp, cfg.log.progress)
    # frozen copy of the policy RL starts from (with the guard also at β = 0, then for measuring KL, not in the loss)
    ref = reference_model(model, rl.beta if guard is None else max(rl.beta, 1.0), lora)
    if rl.importance_sampling_level == "sequence" and rl.loss_type != "grpo":
        print(
            f"note: rl.loss_type {rl.loss_type} with importance_sampling_level: sequence weighs each sequence by its "
            "length; GSPO's objective is the mean over sequences (rl.loss_type: grpo, the default at sequence level)",
            file=sys.stderr,
        )
    critic = build_critic(cfg.critic, rl.algo, model, device)  # PPO's value model; None for the critic-free ones
    set_attention([critic.trunk if critic is not None else None], training_attention(tr.attention, device))
    settings = UpdateSettings.of(cfg)
    optimizer, scheduler = make_optimizer(model, tr, tr.steps * settings.updates, critic, cfg.critic.lr)
    optim = OptimizerStep(settings, model, optimizer, scheduler, estimator, device, amp, critic)
    policy = Policy(model, tok, template, device, amp, ref)
    ahead = AsyncRollouts(experience, rl.max_staleness, tr.steps) if ro.asynchronous else None
    return RLParts(run, task, policy, experience, optim, evaluation, guard, rl.beta, cfg.log.samples_per_step, ahead)


def experience_settings(cfg: RunConfig) -> dict:
    """What :class:`Experience` reads of the config besides what the builder makes of it."""
    ro, rl = cfg.rollout, cfg.rl
    return {
        "sampling": SamplingParams(
            ro.temperature, ro.top_p, ro.max_new_tokens, list(ro.stop), min_new_tokens=ro.min_new_tokens
        ),
        "response_prefix": cfg.task.response_prefix,
        "group_size": ro.group_size,
        "prompts_per_step": rl.prompts_per_step,
        "dynamic_sampling": rl.dynamic_sampling,
        "max_resample_rounds": rl.max_resample_rounds,
        "max_turns": cfg.env.max_turns if cfg.env.enabled else 1,
        "max_episode_tokens": ro.max_episode_tokens,
        "env_workers": cfg.env.workers,
    }


def env_recipe(cfg: RunConfig, template: str) -> EnvRecipe:
    """The ``env`` section as a Ray rollout worker builds it (``py:NAME`` objects carried along)."""
    e = cfg.env
    factory = PYTHON_ENVS.get(e.factory[3:], e.factory) if e.factory and e.factory.startswith("py:") else e.factory
    tools = [PYTHON_ENVS.get(t[3:], t) if t.startswith("py:") else t for t in e.tools]
    ro = cfg.rollout
    return EnvRecipe(
        factory,
        tools,
        e.style,
        e.tool_timeout_s,
        template,
        cfg.task.response_prefix,
        e.max_turns,
        ro.max_episode_tokens,
        e.workers,
    )


def episode_format(cfg: RunConfig, task: Task, tokenizer, template: str) -> EpisodeFormat | None:
    """The environment ``env`` names (checked once, here), how its turns become tokens, and its own reward as the
    reward spec ``env`` (gym-style: the summed step rewards; a TRL class: its ``get_reward``); None without one."""
    if not cfg.env.enabled:
        return None
    env_cfg = cfg.env
    factory = PYTHON_ENVS.get(env_cfg.factory[3:]) if env_cfg.factory and env_cfg.factory.startswith("py:") else None
    env = build_environment(
        factory or env_cfg.factory,
        [PYTHON_ENVS.get(t[3:], t) if t.startswith("py:") else t for t in env_cfg.tools],
        env_cfg.style,
        env_cfg.tool_timeout_s,
        tokenizer=tokenizer,
    )
    print(env.summary())
    own = env.reward_function()
    if own is not None:
        task.rewards = {**task.rewards, "env": own}
    elif any(spec.name == "env" for spec in cfg.rewards):
        raise TrainingError(
            f"rewards: 'env' names the environment's own reward, but {env.name} has none (a gym-style step reward, "
            "or a get_reward method): name reward functions in rewards"
        )
    return EpisodeFormat(tokenizer, template, env, cfg.task.response_prefix)


def evaluation_settings(cfg: RunConfig) -> dict:
    """What :class:`Evaluation` reads of the config besides its verifier and meter."""
    return {
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "response_prefix": cfg.task.response_prefix,
        "reward_mean": cfg.task.eval_reward is not None,
    }


def describe_parts(cfg: RunConfig) -> dict[str, Any]:
    """The config as the parts of an RL run see it (``aha config show --parts``): each part's settings, from the
    same functions :func:`build_parts` builds them with."""
    plain = _plain
    exp = experience_settings(cfg)
    exp["sampling"] = asdict(exp["sampling"])
    update = asdict(UpdateSettings.of(cfg)) | {"rl": plain(cfg.rl)}
    tr = cfg.train
    optimizer_step: dict[str, Any] = {
        "update": update,
        "optimizer": {k: getattr(tr, k) for k in ("steps", "lr", "lr_schedule", "warmup_steps", "weight_decay")}
        | {"adam_betas": list(tr.adam_betas)},
        "critic": plain(cfg.critic) if advantage_estimator(cfg.rl.algo).needs_critic else None,
        "imitation": plain(cfg.sft) | {"batch_size": tr.batch_size} if cfg.sft.imitation_steps else None,
    }
    return {
        "policy": {
            "model": plain(cfg.model),
            "init_from": cfg.init_from,
            "template": cfg.task.template,
            **{k: getattr(tr, k) for k in ("device", "precision", "attention", "seed", "threads")},
        },
        "experience": {
            "task": cfg.task.name,
            "engine": cfg.rollout.engine,
            "compile": cfg.rollout.compile,
            **exp,
            "rewards": [plain(r) for r in cfg.rewards],
            "scoring": asdict(ScoreSettings.of(cfg)),
            "distributed": plain(cfg.distributed) if cfg.distributed.backend != "none" else None,
            "env": plain(cfg.env) if cfg.env.enabled else None,
        },
        "optimizer_step": optimizer_step,
        "guard": plain(cfg.guard) if cfg.guard.enabled else None,
        "evaluation": evaluation_settings(cfg)
        | {
            "eval_every": cfg.log.eval_every,
            "eval_reward": cfg.task.eval_reward,
            "answer_match": cfg.task.answer_match,
            "reasoning_metrics": cfg.log.reasoning_metrics,
        },
    }


def _plain(section) -> dict:
    """A config section as plain data."""
    return section.model_dump(mode="json")


def build_guard(cfg: RunConfig) -> GuardPart | None:
    """The guard ``guard.enabled`` asks for (it needs KL to the reference every step, even at β = 0), with room for
    the weights a rollback may reach back to: the middle of the guard's moving average."""
    if not cfg.guard.enabled:
        return None
    if problem := check_guard_config(cfg):
        raise TrainingError(problem)
    part = GuardPart(Guard(cfg.guard, label_map(cfg.rewards)), cfg.guard.window)
    if cfg.guard.action == "rollback":
        part.recent_weights = deque(maxlen=rollback_reach(cfg.guard.window))
    return part


def trainer_group(parts: RLParts, cfg: RunConfig) -> TrainerGroup | None:
    """The data-parallel trainer ranks ``distributed.trainers`` > 1 asks for (:mod:`aha.rl.ranks`, which imports
    Ray), started from the current weights and optimizer state; None for one trainer process."""
    if cfg.distributed.trainers == 1:
        return None
    return start_trainers(parts.optim, cfg.distributed, cfg.train, parts.run)
