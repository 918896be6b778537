"""Advantage estimators as pure functions of rewards (and, for PPO, a critic's values), registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def group_relative_advantages(
    rewards: torch.Tensor, group_size: int, scale_rewards: str = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages: each reward minus its group's mean, optionally divided by a std.

    ``rewards`` is flat ``[P * G]``, groups contiguous. ``scale_rewards``: ``'group'`` divides by the
    group's std (GRPO), ``'batch'`` by the std of the whole batch, ``'none'`` not at all (Dr. GRPO:
    dividing by the std over-weights nearly-solved and nearly-failed prompts). Stds are unbiased
    (``torch.std``). Returns ``(advantages [P * G], group_std [P])``.

    Worked example, one group of 4 with rewards ``[1, 0, 0, 1]``: mean 0.5, std 0.5774, so
    ``'group'`` gives ``[0.866, -0.866, -0.866, 0.866]`` and ``'none'`` gives ``[0.5, -0.5, -0.5, 0.5]``.
    """
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    # a group whose rewards all agree carries no signal: exactly 0 (the mean's rounding, divided by eps, is ~1e-3)
    agree = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)
    adv = torch.where(agree, torch.zeros_like(grouped), grouped - mean)
    if scale_rewards == "group":
        adv = adv / (std + eps)
    elif scale_rewards == "batch":
        adv = adv / (rewards.std() + eps)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    return adv.reshape(-1), std.squeeze(1)


def zero_std_groups(rewards: torch.Tensor, group_size: int, tol: float = 1e-6) -> torch.Tensor:
    """Boolean ``[P]``: True where every completion of the prompt got the same reward (no learning signal).

    DAPO's dynamic sampling drops these groups and samples more prompts instead.
    Example: rewards ``[1, 1, 0, 1]`` with G = 2 → ``[True, False]``.
    """
    grouped = rewards.view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) <= tol


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): each reward minus the mean of the *other* G − 1 rewards of its group.

    Equals ``G / (G − 1) · (r − group mean)``: an unbiased baseline, since a sample's own reward is left out.
    Worked example, one group ``[1, 0, 0, 1]``: baselines ``[1/3, 2/3, 2/3, 1/3]`` → ``[2/3, −2/3, −2/3, 2/3]``.
    """
    if group_size < 2:
        raise ValueError("RLOO needs rollout.group_size ≥ 2 (the baseline is the other samples of the prompt)")
    grouped = rewards.view(-1, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def token_level_rewards(
    scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, beta: float = 0.0
) -> torch.Tensor:
    """Per-token rewards for PPO / REINFORCE++: ``−β·KL_t`` on every completion token, plus the
    sequence's score on its last unmasked token. ``scores [B]``, ``mask``/``kl`` ``[B, T]`` → ``[B, T]``.

    Worked example: score 1, mask ``[1, 1, 1, 0]``, KL ``[0.1, 0.2, 0.0, 9]``, β = 0.5
    → ``[−0.05, −0.1, 1.0, 0]``.
    """
    mask = mask.to(torch.float32)
    rewards = torch.zeros_like(mask) if kl is None else -beta * kl.float() * mask
    has_tokens = mask.sum(-1) > 0
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)  # index of the last 1
    rows = torch.arange(mask.shape[0], device=mask.device)[has_tokens]
    rewards[rows, last[has_tokens]] += scores.float().to(mask.device)[has_tokens]
    return rewards


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_t = Σ_{s ≥ t} γ^{s−t} r_s`` over each completion's unmasked tokens (REINFORCE's return-to-go).
    Masked positions are skipped, not zeroed: in a multi-turn episode the environment's tokens between two of the
    model's turns carry the return through (γ counts the model's tokens only); they come out 0.

    Worked example: rewards ``[−0.05, −0.1, 1.0, 0]``, mask ``[1, 1, 1, 0]``, γ = 1 → ``[0.85, 0.9, 1.0, 0]``;
    with an environment token inside, rewards ``[0, 0, 1]``, mask ``[1, 0, 1]``, γ = 0.5 → ``[0.5, 0, 1]``.
    """
    mask = mask.to(torch.float32)
    out = torch.zeros_like(rewards, dtype=torch.float32)
    running = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(mask[:, t] > 0, rewards[:, t] + gamma * running, running)
        out[:, t] = running * mask[:, t]
    return out


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016) over per-token rewards and critic values.

    ``δ_t = r_t + γ·V_{t+1} − V_t`` (V = 0 after a completion's last token), ``A_t = δ_t + γλ·A_{t+1}``,
    returns ``R_t = A_t + V_t`` (the critic's regression target). λ = 1 gives Monte-Carlo returns minus V;
    λ = 0 one-step TD. All ``[B, T]``; masked positions come out 0. Returns ``(advantages, returns)``.
    The recursion runs over the unmasked tokens only: ``t + 1`` is the next unmasked token, so in a multi-turn
    episode the environment's tokens between two of the model's turns are skipped, not treated as an end.

    Worked example, one completion of 3 tokens, r = ``[0, 0, 1]``, V = ``[0.5, 0.6, 0.7]``, γ = 1, λ = 0.9:
    δ = ``[0.1, 0.1, 0.3]``; A_2 = 0.3, A_1 = 0.1 + 0.9·0.3 = 0.37, A_0 = 0.1 + 0.9·0.37 = 0.433;
    R = ``[0.933, 0.97, 1.0]``. With an environment token between the first two (mask ``[1, 0, 1, 1]``) the
    model's three tokens get the same advantages, and the environment's 0.
    """
    mask = mask.to(torch.float32)
    values = values.float() * mask
    rewards = rewards.float() * mask
    adv = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], device=rewards.device)
    next_value = torch.zeros_like(running)  # V of the next unmasked token (0 after the last)
    for t in reversed(range(rewards.shape[1])):
        model = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(model, delta + gamma * lam * running, running)
        next_value = torch.where(model, values[:, t], next_value)
        adv[:, t] = running * mask[:, t]
    return adv, (adv + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean if ``shift_mean``) over its masked entries (the batch).

    Masked-out entries come out 0. Worked example: ``[1, 2, 3]`` → ``[−1.2247, 0, 1.2247]`` (population std).
    """
    mask = mask.to(torch.float32)
    mean, var = _masked_mean_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 − Var(R − V) / Var(R)`` over masked tokens: 1 = the critic predicts returns exactly, 0 = no better
    than a constant, < 0 = worse. NaN-free: 0 when the returns do not vary."""
    mask = mask.to(torch.float32)
    var_r = _masked_mean_var(returns.float(), mask)[1]
    if var_r.item() <= 1e-12:
        return 0.0
    return (1 - _masked_mean_var(returns.float() - values.float(), mask)[1] / var_r).item()


def _masked_mean_var(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance of ``x`` over the entries where the (float) ``mask`` is 1."""
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    return mean, (((x - mean) * mask) ** 2).sum() / n


# ----------------------------------------------------------------------------- the registry, as verl's core_algos


@dataclass(frozen=True)
class AdvantageEstimator:
    """An advantage estimator registered under ``rl.algo``, with the properties the loop asks of it."""

    name: str
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    needs_critic: bool = False  # PPO: the loop builds a value model and passes its values
    kl_in_reward: bool = True  # β·KL goes into the reward (False: into the loss, as GRPO)
    min_group_size: int = 1  # completions per prompt the estimator needs
    description: str = ""


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage(
    name: str, *, needs_critic: bool = False, kl_in_reward: bool = True, min_group_size: int = 1, description: str = ""
):
    """Register ``fn(scores, mask, group_size, *, kl, beta, values, gamma, lam, scale_rewards, whiten_advantages)
    -> (advantages, returns)`` as the estimator ``rl.algo: name``. ``scores [B]`` are the summed reward scores,
    ``mask [B, T]`` the completion tokens, ``kl [B, T]`` the per-token KL to the reference when it goes into the
    reward (else None), ``values [B, T]`` the critic's. Advantages are ``[B]`` or ``[B, T]``; returns ``[B, T]`` —
    the critic's regression target — or None."""

    def register(fn):
        ADVANTAGE_ESTIMATORS[name] = AdvantageEstimator(
            name, fn, needs_critic, kl_in_reward, min_group_size, description
        )
        return fn

    return register


def advantage_estimator(name: str) -> AdvantageEstimator:
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r} (registered: {', '.join(ADVANTAGE_ESTIMATORS)})")
    return ADVANTAGE_ESTIMATORS[name]


@register_advantage(
    "grpo",
    kl_in_reward=False,
    min_group_size=2,
    description="group-relative: each reward minus its group's mean, "
    "divided by a std (rl.scale_rewards); β·KL in the loss",
)
def _grpo(scores, mask, group_size, *, scale_rewards="group", **_):
    return group_relative_advantages(scores, group_size, scale_rewards)[0], None


@register_advantage(
    "rloo", min_group_size=2, description="leave-one-out: each reward minus the mean of the other samples of its prompt"
)
def _rloo(scores, mask, group_size, *, kl=None, beta=0.0, **_):
    seq = scores.float() - (beta * (kl.float() * mask).sum(-1) if kl is not None else 0.0)
    return rloo_advantages(seq, group_size), None


def _reinforce_pp(scores, mask, kl, beta, gamma):
    rewards = token_level_rewards(scores, mask, kl, beta)
    return whiten(discounted_returns(rewards, mask, gamma), mask), None


@register_advantage("reinforce++", description="returns with a token-level KL penalty, whitened over the batch")
def _reinforce(scores, mask, group_size, *, kl=None, beta=0.0, gamma=1.0, **_):
    return _reinforce_pp(scores, mask, kl, beta, gamma)


@register_advantage(
    "reinforce++_baseline",
    min_group_size=2,
    description="reinforce++ with the group mean subtracted from the scores first",
)
def _reinforce_baseline(scores, mask, group_size, *, kl=None, beta=0.0, gamma=1.0, **_):
    return _reinforce_pp(group_relative_advantages(scores, group_size, "none")[0], mask, kl, beta, gamma)


@register_advantage("ppo", needs_critic=True, description="a critic + GAE (see the critic section)")
def _ppo(scores, mask, group_size, *, kl=None, beta=0.0, values=None, gamma=1.0, lam=0.95, whiten_advantages=True, **_):
    if values is None:
        raise ValueError("ppo advantages need the critic's values")
    rewards = token_level_rewards(scores, mask, kl, beta)
    adv, returns = gae_advantages(rewards, values, mask, gamma, lam)
    return (whiten(adv, mask) if whiten_advantages else adv), returns


def compute_advantages(
    algo: str,
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_rewards: str = "group",
    whiten_advantages: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The advantage estimator registered as ``algo`` (see :func:`register_advantage`). ``kl`` is used only by the
    estimators that put β·KL into the reward, and only when ``beta > 0``."""
    est = advantage_estimator(algo)
    use_kl = kl is not None and beta > 0 and est.kl_in_reward
    return est.fn(
        scores,
        mask,
        group_size,
        kl=kl if use_kl else None,
        beta=beta,
        values=values,
        gamma=gamma,
        lam=lam,
        scale_rewards=scale_rewards,
        whiten_advantages=whiten_advantages,
    )
