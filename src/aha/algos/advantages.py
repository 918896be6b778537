"""Advantage estimators as pure functions of rewards (critic-free)."""

from __future__ import annotations

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
    adv = grouped - mean
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
