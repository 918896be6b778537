"""Config sections of the RL objective (``rl``: the advantage estimator, the policy loss and its clip, KL, the
asynchronous rollouts' off-policy correction) and PPO's critic (``critic``).

Each field carries a description: ``aha config show`` prints them, so the config is the documentation.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from aha.config.sections import _Section


class RLConfig(_Section):
    algo: str = Field(
        "grpo",
        description="Advantage estimator (registered in aha.algos.advantages): grpo (group-relative), rloo "
        "(leave-one-out), reinforce++ (returns with a token-level KL penalty, whitened over the batch), "
        "reinforce++_baseline (group mean subtracted first), ppo (a critic + GAE; see the critic section). KL to the "
        "reference goes into the loss for grpo, into the reward for the others.",
    )
    policy_loss: str = Field(
        "clip",
        description="Policy loss (registered in aha.algos.losses): 'clip' = the clipped "
        "surrogate of PPO / GRPO / DAPO / GSPO; 'cispo' = MiniMax-M1's CISPO, −sg(clip(ρ, "
        "1−epsilon_low, 1+epsilon_high))·A·log π: the clip bounds each token's weight instead of "
        "dropping its gradient (the paper sets no lower bound, epsilon_low: 1.0, and tunes "
        "epsilon_high; μ > 1 is where it differs from the clip).",
    )
    prompts_per_step: int = Field(
        16, ge=1, description="Prompts per step; the batch holds prompts_per_step × group_size completions."
    )
    mu: int = Field(
        1,
        ge=1,
        description="μ: optimisation passes (PPO epochs) over each batch of rollouts (the ratio departs "
        "from 1 after the first optimizer step).",
    )
    num_minibatches: int = Field(
        1,
        ge=1,
        description="Optimizer steps per pass: the batch is split into this many shuffled "
        "minibatches (PPO-style); 1 = one step per pass over the whole batch.",
    )
    beta: float = Field(0.0, ge=0, description="KL coefficient to the reference model (0 = no reference model kept).")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="Per-token KL estimator (Schulman's k1/k2/k3).")
    epsilon_low: float = Field(0.2, ge=0, description="Clip range below 1 for the ratio.")
    epsilon_high: float | None = Field(
        None, ge=0, description="Clip range above 1 (DAPO clip-higher, e.g. 0.28); default = epsilon_low."
    )
    dual_clip: float | None = Field(
        None,
        gt=1,
        description="PPO's dual clip (Ye et al. 2020; 3 is typical): where the "
        "advantage is negative a token's clipped-surrogate loss is at most dual_clip × |A| "
        "(a token whose ratio soared cannot dominate the batch); None = off. Policy loss "
        "'clip' only.",
    )
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "dapo",
        description="Loss aggregation: grpo = per-sequence mean; bnpo/dapo = token mean over the batch; "
        "dr_grpo = token sum / (sequences × max_new_tokens). Left unset it is dapo, or grpo (the mean over "
        "sequences, GSPO's objective) with importance_sampling_level: sequence, where a token mean would weigh each "
        "sequence by its length.",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="Divide advantages by the group std ('group', GRPO), the batch std, or not at all (Dr. GRPO).",
    )
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token",
        description="'sequence' = GSPO's length-normalised sequence ratio (its paper's clip range is far "
        "narrower, e.g. epsilon_low 3e-4, epsilon_high 4e-4); loss_type then defaults to grpo (a mean over sequences).",
    )
    mask_truncated: bool = Field(False, description="Exclude completions cut at max_new_tokens from the loss (DAPO).")
    dynamic_sampling: bool = Field(
        False, description="Drop groups whose rewards all agree and sample more prompts (DAPO)."
    )
    max_resample_rounds: int = Field(3, ge=0, description="Dynamic sampling: extra sampling rounds per step at most.")
    old_logprobs: Literal["auto", "sampler", "recompute"] = Field(
        "auto",
        description="Old-policy logprobs for μ>1: the sampler's own (free; exact in fp32), a separate no-grad "
        "pass, or 'auto' = recompute under bf16 (cached decoding and a full pass round differently: ~0.03 nats/token).",
    )
    gamma: float = Field(1.0, ge=0, le=1, description="ppo / reinforce++: discount over completion tokens.")
    lam: float = Field(0.95, ge=0, le=1, description="ppo: GAE λ (1 = Monte-Carlo returns, 0 = one-step TD).")
    whiten_advantages: bool = Field(
        True, description="ppo: normalise advantages over the batch's tokens (mean 0, std 1)."
    )
    entropy_coef: float = Field(
        0.0, ge=0, description="Entropy bonus: subtract entropy_coef × mean token entropy from the loss."
    )
    max_staleness: int = Field(
        1,
        ge=1,
        description="rollout.asynchronous: the most weight versions a batch may lag the trainer by (1 = one-step-off: "
        "step t+1's batch is sampled with the weights before step t's update while that update runs).",
    )
    is_cap: float = Field(
        2.0,
        ge=1,
        description="rollout.asynchronous: the cap C of the truncated importance weight min(π_old/π_behaviour, C) "
        "each token's loss is multiplied by (TRL's vllm_importance_sampling_cap).",
    )
    is_level: Literal["token", "sequence"] = Field(
        "token",
        description="rollout.asynchronous: one importance weight per token, or one per completion (the exp of its "
        "summed log-ratios; far more often capped on long completions).",
    )
    reward_on_error: Literal["raise", "skip"] = Field(
        "raise",
        description="A reward function that raises: stop the run naming it, or give that sample no opinion (None).",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_aggregation(cls, data: Any) -> Any:
        """GSPO's objective is a mean over sequences: an unset loss_type follows importance_sampling_level."""
        if (
            isinstance(data, dict)
            and data.get("loss_type") is None
            and data.get("importance_sampling_level") == "sequence"
        ):
            data = {**data, "loss_type": "grpo"}
        return data


class CriticConfig(_Section):
    kind: Literal["separate", "head"] = Field(
        "separate",
        description="ppo: 'separate' = its own backbone (a copy of the policy's trunk or a reward model) plus a "
        "value head; 'head' = a value head on the policy's own trunk (one forward pass, shared gradients).",
    )
    init_from: str = Field(
        "policy",
        description="ppo, separate critic: 'policy' (the policy RL starts from) or a local HF "
        "directory of a reward model (sequence classification; its score head becomes the value head).",
    )
    lr: float | None = Field(None, gt=0, description="Critic learning rate (default: train.lr).")
    vf_coef: float = Field(0.5, ge=0, description="Weight of the value loss in the total loss.")
    clip_range: float | None = Field(
        0.2, gt=0, description="Value clipping around the old values (None = no clipping)."
    )
