"""Config sections of the reward-model stage, the guard, logging and Ray, and :class:`RunConfig`, which holds them all."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from aha.config.objective import CriticConfig, RLConfig
from aha.config.sections import (
    ModelConfig,
    RewardSpec,
    RolloutConfig,
    SFTConfig,
    TaskConfig,
    TrainConfig,
    _Section,
)


class RewardModelConfig(_Section):
    path: Path | None = Field(
        None,
        description="stage reward_model: preference data — rankings {prompt, completions, "
        "ranking (indices best-first, ties as nested lists)} or TRL pairs {prompt, chosen, "
        "rejected} — as .jsonl, .json, .parquet or a datasets save_to_disk directory.",
    )
    eval_path: Path | None = Field(
        None, description="Held-out preference data; default: the last eval_fraction of the rows of path."
    )
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of path's rows held out when eval_path is not set (at least one row)."
    )
    loss: Literal["bt", "pl"] = Field(
        "bt",
        description="'bt' = Bradley-Terry on every ordered pair a ranking implies "
        "(each ranking weighted once in total); 'pl' = Plackett-Luce on the whole ranking "
        "(listwise; ties share a position, Breslow). On pairs the two are the same.",
    )
    margin: float = Field(
        0.0, ge=0, description="bt: the better completion must win by this much: −log σ(r_b − r_w − margin)."
    )
    center_coef: float = Field(
        0.0,
        ge=0,
        description="Reward centering: add center_coef × mean over rankings of (their "
        "mean score)², so scores stay near 0 per prompt (TRL's center_rewards_coefficient c on "
        "pairs is center_coef = 4c).",
    )
    num_heads: int = Field(
        1,
        ge=1,
        le=64,
        description="Ensemble: scalar heads on one trunk, each initialised "
        "differently and trained on its own Poisson(1) bootstrap weighting of every batch. The "
        "saved score head is their mean (what plain transformers returns); the heads themselves go "
        "to aha_ensemble.json beside it, for the rm: reward's mean − std_coef·std and disagreement.",
    )
    support: bool = Field(
        True,
        description="After training, save where the training data lies in the model's feature "
        "space (mean and inverse covariance of its completions' pooled features, "
        "aha_support.safetensors): the rm: reward then logs support_distance and ood_fraction, the "
        "reward-hacking guard's no-gold signal (aha.rewards.support).",
    )
    support_samples: int = Field(
        1024,
        ge=2,
        description="Training completions (drawn at random) the support is "
        "fitted on, and held-out ones its unit is measured on: one fp32 forward pass each.",
    )
    bootstrap: bool = Field(
        True,
        description="Ensemble (num_heads > 1): each head weighs every ranking by its own "
        "Poisson(1) draw (online bootstrap); false = every head sees the same data.",
    )
    template: Literal["auto", "plain", "chat"] = Field(
        "auto",
        description="How prompt + completion become one text: 'chat' = the tokenizer's chat template (user "
        "turn, assistant turn); 'plain' = the prompt's text followed by the completion's; 'auto' = chat where the "
        "tokenizer has a template. Saved with the model, so the rm: reward scores the same way.",
    )
    max_length: int = Field(
        512,
        ge=8,
        description="Longest input in tokens; a longer one keeps its last max_length "
        "tokens (the completion's end, where the score is read).",
    )
    head_lr: float | None = Field(None, gt=0, description="Learning rate of the scalar head(s) (default: train.lr).")


class GuardConfig(_Section):
    """The reward-hacking guard (aha.guard): watches every RL step's metrics and stops or rolls back."""

    enabled: bool = Field(
        False,
        description="Watch the run for reward hacking (KL budget, gold vs proxy, ensemble "
        "disagreement) and act as guard.action says. The trainer then measures KL to a frozen copy of "
        "the starting policy every step, even at rl.beta = 0 (for measurement only, not in the loss).",
    )
    action: Literal["stop", "rollback"] = Field(
        "rollback",
        description="On a trigger: 'stop' the run where it is, or 'rollback' = restore the best step's "
        "weights (by smoothed gold where guard.gold is set, else the highest smoothed proxy while the ensemble still "
        "agreed, else the highest proxy under the KL budget), then stop.",
    )
    kl_budget: float | None = Field(
        None,
        gt=0,
        description="Act as soon as the logged kl (per-token KL to the "
        "reference, rl.kl_estimator) exceeds this; None = no budget.",
    )
    gold: str | None = Field(
        None,
        description="Name of a held-out judge among rewards (give it weight 0: logged as "
        "reward/<name>/mean, never optimised). Warning sign: smoothed gold falls while the smoothed "
        "proxy rises.",
    )
    proxy: str | None = Field(
        None,
        description="Name of the optimised reward among rewards to watch as the proxy; "
        "None = the weighted total reward/mean.",
    )
    disagreement: str | None = Field(
        None,
        description="Name of a reward-model reward (rm:PATH) whose "
        "reward/<name>/<guard.signal> is watched when guard.gold is not set. Warning sign: "
        "it rises above its early baseline.",
    )
    signal: Literal["ensemble_std", "support_distance"] = Field(
        "support_distance",
        description="The no-gold warning sign read from the guard.disagreement reward: "
        "'support_distance' = how far the policy's samples are from the reward model's training data in its feature "
        "space (needs the support the reward-model stage saves, reward_model.support); 'ensemble_std' = the "
        "disagreement of its ensemble heads (reward_model.num_heads > 1).",
    )
    window: int = Field(5, ge=1, description="Steps in the moving averages of proxy, gold and disagreement.")
    patience: int = Field(5, ge=1, description="Consecutive steps the warning sign must last before the guard acts.")
    gold_tolerance: float = Field(
        0.02,
        ge=0,
        description="Gold counts as fallen when its moving average is this fraction of its best below that best.",
    )
    baseline_steps: int = Field(
        10, ge=1, description="No-gold baseline: the mean guard.signal of the first this many steps."
    )
    disagreement_rise: float = Field(
        0.5,
        gt=0,
        description="The no-gold signal counts as risen when its moving average exceeds (1 + this) × the baseline.",
    )
    min_steps: int = Field(10, ge=0, description="No warning counts before this many steps (moving averages settle).")
    fit_gao: bool = Field(
        True,
        description="Fit Gao et al. 2022's R(d) = d(α − β log d), d = √KL, to gold online "
        "(least squares; gold relative to its first window) and log the predicted peak √KL, "
        "exp(α/β − 1), as guard/predicted_peak_sqrt_kl.",
    )
    gao_confirms: bool = Field(
        True,
        description="With guard.gold and fit_gao: the gold warning acts only once √KL has "
        "passed the fitted curve's predicted peak (or after 3 × patience steps of it), so a dip "
        "before the real peak is waited out.",
    )


class LogConfig(_Section):
    eval_every: int = Field(10, ge=0, description="Greedy eval/accuracy every N steps (and at step 0); 0 = off.")
    save_every: int = Field(50, ge=0, description="Checkpoint every N steps (and at the end); 0 = only at the end.")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept on disk.")
    samples_per_step: int = Field(4, ge=0, description="Completions written to samples.jsonl per step.")
    tensorboard: bool = Field(True, description="Also write TensorBoard event files to RUN_DIR/tb.")
    wandb: bool = Field(False, description="Also log to Weights & Biases (pip install wandb).")
    wandb_project: str = Field("aha", description="W&B project name.")
    progress: bool = Field(True, description="Show a progress bar.")
    report: bool = Field(True, description="Write RUN_DIR/report.html at the end of the run.")
    reasoning_metrics: bool | Literal["auto"] = Field(
        "auto",
        description="Log the reasoning metrics every step (reasoning/*: format compliance, strict and lenient "
        "accuracy, reflection rate, accuracy of reflecting vs other completions, mean length of right and wrong "
        "completions, aha moments; see aha.track.reasoning), at eval (eval/reasoning/*) and in `aha eval`; "
        "'auto' = on for task.template r1 and r1_plain.",
    )


class DistributedConfig(_Section):
    backend: Literal["none", "ray"] = Field(
        "none",
        description="'ray': rollouts sampled by Ray actors (pip install "
        "'aha[ray]'), each with its own copy of the policy; 'none': in-process.",
    )
    rollout_workers: int = Field(
        2, ge=1, description="ray: rollout worker actors; the prompts of a step are split between them."
    )
    address: str | None = Field(
        None,
        description="ray: a running cluster's address ('auto', or HOST:PORT of `ray "
        "start --head`); unset = a local Ray instance aha starts and stops itself.",
    )
    timeout_s: float = Field(
        600.0,
        gt=0,
        description="ray: longest wait for one remote call; a worker that takes "
        "longer is restarted and its prompts sampled again.",
    )
    max_restarts: int = Field(
        3, ge=0, description="ray: restarts of a failing worker within one call before the run stops."
    )
    rewards: Literal["workers", "trainer"] = Field(
        "workers",
        description="ray: where rewards are computed — 'workers': each rollout worker builds the run's "
        "reward functions itself and rewards its shard beside the completions (a reward model loads in every worker); "
        "'trainer': the workers only sample and this process rewards the whole batch. The same numbers either way.",
    )
    trainers: int = Field(
        1,
        ge=1,
        description="ray: data-parallel trainer ranks (torch.distributed: gloo on CPU, NCCL "
        "on GPU): this process is rank 0 and M-1 Ray actors the others; each takes a share of every "
        "minibatch and the gradients are summed over the ranks (critic-free algorithms, no LoRA).",
    )

    def trainer_problem(self, cfg) -> str | None:
        """Why ``trainers`` > 1 cannot serve the run ``cfg`` (a RunConfig), or None."""
        if self.trainers == 1:
            return None
        from aha.algos.advantages import ADVANTAGE_ESTIMATORS  # (torch: the config stays importable without it)

        what = f"distributed.trainers={self.trainers}"
        if self.backend != "ray":
            return f"{what} needs distributed.backend: ray (the other trainer ranks are Ray actors)"
        if cfg.stage != "rl":
            return f"{what} applies to the RL stages only (stage {cfg.stage!r} trains in one process)"
        if cfg.rl.algo in ADVANTAGE_ESTIMATORS and ADVANTAGE_ESTIMATORS[cfg.rl.algo].needs_critic:
            return f"{what} does not support a critic yet (rl.algo {cfg.rl.algo!r}): use a critic-free rl.algo or trainers: 1"
        if cfg.model.lora.enabled:
            return f"{what} does not support LoRA yet (model.lora.enabled): set one of them back"
        return None


class EnvConfig(_Section):
    factory: str | None = Field(
        None,
        description="Multi-turn episodes: the environment, as file.py:Class or module:Class (or a built-in: "
        "guess_number). A class whose only public methods are reset and step is gym-style (each model turn is the "
        "action); any other is TRL's environment_factory shape (reset(**row), public methods with docstrings as "
        "tools). The Python API takes the class itself: aha.train(..., environment_factory=Cls).",
    )
    tools: list[str] = Field(
        default_factory=list,
        description="Plain functions with docstrings as stateless tools (TRL's tools=): file.py:fn, module:fn, or "
        "the built-ins calculator (exact arithmetic) and python (runs in aha's sandbox).",
    )
    style: Literal["auto", "tools", "gym"] = Field(
        "auto", description="How the factory is driven: 'auto' guesses from its methods (see env.factory)."
    )
    max_turns: int = Field(8, ge=1, description="Most model turns in an episode.")
    tool_timeout_s: float = Field(
        30.0, gt=0, description="A tool call that takes longer is answered with an error message (counted)."
    )
    workers: int = Field(1, ge=1, description="Episodes answered at once in threads (for tools that wait).")

    @property
    def enabled(self) -> bool:
        return self.factory is not None or bool(self.tools)


class RunConfig(_Section):
    """A whole run: ``stage`` picks the trainer; the other sections configure it."""

    stage: Literal["rl", "sft", "reward_model"] = Field(
        "rl",
        description="Which trainer runs: 'rl' (the algorithm rl.algo names), 'sft' (imitation) "
        "or 'reward_model' (a scalar reward model from rankings or pairs; see reward_model).",
    )
    init_from: Path | None = Field(
        None, description="Start from this checkpoint's model dir instead of model.name's weights."
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="Prompts, answers and held-out split.")
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="accuracy")], description="Reward functions and weights."
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling.")
    rl: RLConfig = Field(default_factory=RLConfig, description="RL objective (GRPO, PPO, RLOO, REINFORCE++).")
    critic: CriticConfig = Field(default_factory=CriticConfig, description="PPO's value model.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="SFT data.")
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig, description="Reward-model training.")
    log: LogConfig = Field(default_factory=LogConfig, description="Metrics, eval, checkpoints.")
    guard: GuardConfig = Field(default_factory=GuardConfig, description="Reward-hacking guard (RL stages).")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="Scale-out on Ray.")
    env: EnvConfig = Field(default_factory=EnvConfig, description="Multi-turn episodes: environments and tools.")

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.stage == "sft" and self.sft.path is None:
            raise ValueError("stage 'sft' needs sft.path (a prompt/completion JSONL)")
        if self.stage == "reward_model" and self.reward_model.path is None:
            raise ValueError(
                "stage 'reward_model' needs reward_model.path (rankings or pairs: .jsonl, .json, .parquet "
                "or a datasets directory)"
            )
        if self.reward_model.loss == "pl" and self.reward_model.margin:
            raise ValueError("reward_model.margin applies to loss 'bt' only (set margin: 0 or loss: bt)")
        from aha.algos.advantages import ADVANTAGE_ESTIMATORS  # (torch: the config stays importable without it)
        from aha.algos.losses import POLICY_LOSSES

        if self.rl.algo not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"rl.algo {self.rl.algo!r} is not a registered estimator ({', '.join(ADVANTAGE_ESTIMATORS)})"
            )
        if self.rl.policy_loss not in POLICY_LOSSES:
            raise ValueError(
                f"rl.policy_loss {self.rl.policy_loss!r} is not a registered loss ({', '.join(POLICY_LOSSES)})"
            )
        if self.rl.dual_clip is not None and self.rl.policy_loss == "cispo":
            raise ValueError(
                "rl.dual_clip bounds the clipped surrogate (policy_loss: clip); CISPO's weight is already "
                "clipped (unset one of them)"
            )
        if self.rollout.group_size < ADVANTAGE_ESTIMATORS[self.rl.algo].min_group_size:
            raise ValueError(
                f"rl.algo {self.rl.algo!r} needs rollout.group_size ≥ "
                f"{ADVANTAGE_ESTIMATORS[self.rl.algo].min_group_size} (its baseline is the prompt's other samples)"
            )
        if self.rollout.compile is True and self.model.lora.enabled:
            raise ValueError("rollout.compile does not support LoRA policies yet (set one of them to false)")
        if self.rl.dynamic_sampling and self.rollout.group_size < 2:
            raise ValueError(
                "rl.dynamic_sampling needs rollout.group_size ≥ 2 (it drops groups whose rewards all agree)"
            )
        if problem := self.distributed.trainer_problem(self):
            raise ValueError(problem)
        if problem := asynchronous_problem(self):
            raise ValueError(problem)
        if self.env.enabled and self.distributed.backend == "ray" and self.distributed.rewards != "workers":
            raise ValueError(
                "env with distributed.backend: ray plays the episodes in the rollout workers, each with its own "
                "environment, and rewards them there: set distributed.rewards: workers"
            )
        if self.env.factory is not None and "rewards" not in self.model_fields_set:
            self.rewards = [RewardSpec(name="env")]  # the environment's own reward (gym-style steps, get_reward)
        return self


def asynchronous_problem(cfg: RunConfig) -> str | None:
    """Why ``rollout.asynchronous`` cannot serve the run ``cfg``, or None."""
    if not cfg.rollout.asynchronous:
        return None
    what = "rollout.asynchronous"
    if cfg.stage != "rl":
        return f"{what} applies to the RL stages only"
    if cfg.distributed.backend != "ray":
        return (
            f"{what} needs distributed.backend: ray (rollout workers that sample while the trainer trains; in one "
            "process sampling and training would share the same cores, see docs/async.md)"
        )
    if cfg.rl.dynamic_sampling:
        return f"{what} does not support rl.dynamic_sampling yet (its extra rounds wait for the new weights)"
    if cfg.distributed.trainers > 1:
        return f"{what} does not support distributed.trainers > 1 yet: set one of them back"
    return None
