"""The optimizer step every stage takes: AdamW over the trainable parameters with a warm-up and decay schedule
(:func:`make_optimizer`), and a step taken only when the loss and gradient norms are finite (:func:`finite_step`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from aha.config import TrainConfig


def make_optimizer(
    model: torch.nn.Module,
    cfg: TrainConfig,
    total_steps: int,
    critic: torch.nn.Module | None = None,
    critic_lr: float | None = None,
):
    """AdamW over trainable parameters and a warm-up + (constant | linear | cosine) schedule.

    A critic, if given, is a second parameter group (its own learning rate, the same schedule)."""
    groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if critic is not None:
        groups.append({"params": [p for p in critic.parameters() if p.requires_grad], "lr": critic_lr or cfg.lr})
    # the fused kernel reads and writes each parameter's state once per step, where the default for-each path
    # streams it through memory ~15 times (SmolLM2 on 2 CPU cores: 0.12 vs 0.40 s per step); same update rule
    fused = all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
        for g in groups
        for p in g["params"]
    )
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay, fused=fused or None)

    def factor(i: int) -> float:
        if i < cfg.warmup_steps:
            return (i + 1) / (cfg.warmup_steps + 1)
        progress = (i - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        if cfg.lr_schedule == "linear":
            return max(0.0, 1 - progress)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def finite_step(optimizer: torch.optim.Optimizer, loss, *grad_norms) -> str | None:
    """Take the optimizer step if the loss and the gradient norms are all finite and return None; otherwise drop
    the gradients, leaving the parameters and the optimizer's state (Adam's moments, its step count) as they
    were, and return what was not finite, e.g. ``"loss is nan"`` or ``"gradient norm is inf"``. (The caller
    advances its LR schedule only after a step taken.)"""
    problem = None if math.isfinite(float(loss)) else f"loss is {float(loss)}"
    for norm in grad_norms:
        if problem is None and not math.isfinite(float(norm)):
            problem = f"gradient norm is {float(norm)}"
    if problem is None:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return problem
