"""Policy losses (the clipped surrogate of PPO / GRPO / DAPO / GSPO, with PPO's dual clip; CISPO) and their
aggregations (GRPO, BNPO, Dr. GRPO, DAPO)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def importance_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: str = "token"
) -> torch.Tensor:
    """``ρ [B, T]``: ``π_θ(o_t)/π_old(o_t)`` per token (``level='token'``), or GSPO's one ratio per completion
    (``level='sequence'``): ``exp(mean_t log ρ_t)`` over its unmasked tokens, shared by all its tokens."""
    log_ratio = logp - old_logp
    if level == "sequence":
        seq = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        log_ratio = seq.unsqueeze(-1).expand_as(logp)
    elif level != "token":
        raise ValueError(f"importance sampling level must be 'token' or 'sequence', got {level!r}")
    return torch.exp(log_ratio)


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    level: str = "token",
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO/GRPO loss ``−min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A)`` and where clipping is active.

    ``logp``/``old_logp``/``mask`` are ``[B, T]``; ``advantages`` is ``[B]`` (one per completion: GRPO, RLOO) or
    ``[B, T]`` (one per token: PPO's GAE, REINFORCE++).
    ``level='token'``: ρ_t = π_θ(o_t)/π_old(o_t). ``level='sequence'`` (GSPO): one ratio per completion,
    ρ = exp(mean_t log ρ_t) over its unmasked tokens, shared by all its tokens (:func:`importance_ratio`).
    ``epsilon_high`` > ``epsilon_low`` is DAPO's clip-higher (default: symmetric).
    ``dual_clip = c > 1`` (Ye et al. 2020): where A < 0 the loss is at most ``c·|A|`` — the pessimistic min
    would otherwise grow without bound with ρ (a token the old policy found unlikely, now likely).

    Returns ``(per_token_loss [B, T], clipped [B, T] bool)``; ``clipped`` marks tokens whose gradient
    the clip removed (ρ > 1+ε_high with A > 0, ρ < 1−ε_low with A < 0, or the dual clip's ρ > c with A < 0).

    Worked example, one token, ε = 0.2: logp − old_logp = ln 1.5 (ρ = 1.5), A = 2 → unclipped 3.0,
    clipped 1.2·2 = 2.4, loss = −2.4 and the token counts as clipped. With A = −2 the min picks
    ρ·A = −3.0 → loss = 3.0, not clipped (the pessimistic bound keeps the full penalty). With ρ = 4, A = −2
    that penalty is 8.0; a dual clip c = 3 caps it at 3·2 = 6.0 (its gradient then 0: clipped).
    """
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    ratio = importance_ratio(logp, old_logp, mask, level)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    unclipped = ratio * adv
    clipped_obj = torch.clamp(ratio, 1 - epsilon_low, 1 + eps_high) * adv
    per_token = -torch.min(unclipped, clipped_obj)
    is_clipped = ((ratio > 1 + eps_high) & (adv > 0)) | ((ratio < 1 - epsilon_low) & (adv < 0))
    if dual_clip is not None:
        bound = -dual_clip * adv  # c·|A| where A < 0
        dual = (adv < 0) & (per_token > bound)
        per_token = torch.where(dual, bound, per_token)
        is_clipped = is_clipped | dual
    return per_token, is_clipped


def cispo_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    level: str = "token",
) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, 2025): the REINFORCE term weighted by a clipped, stop-gradient importance weight,
    per token ``−sg(clip(ρ, 1−ε_low, 1+ε_high))·A·log π_θ(o_t)``.

    Unlike the clipped surrogate, no token loses its gradient: the clip bounds the *weight* of a token's
    ``∇log π_θ``, it does not zero it (PPO's clip drops exactly the rare tokens — "However", "Wait" — whose
    ratio moves most). The paper sets no lower bound (here: ``epsilon_low = 1``) and tunes only ε_high.
    Shapes and ``level`` as :func:`clipped_surrogate`. Returns ``(per_token_loss [B, T], clipped [B, T] bool)``
    where ``clipped`` marks tokens whose weight was clipped (their gradient is scaled, not removed).

    Worked example, ε_low = ε_high = 0.2, A = 2: log π_θ = −1, ρ = 1.5 → weight clip(1.5) = 1.2,
    loss = −1.2·2·(−1) = 2.4, gradient d loss / d log π_θ = −1.2·2 = −2.4 (the surrogate's would be 0);
    ρ = 1.1 → weight 1.1, loss 2.2, gradient −2.2.
    """
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    ratio = importance_ratio(logp, old_logp, mask, level).detach()
    weight = torch.clamp(ratio, 1 - epsilon_low, 1 + eps_high)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    return -weight * adv * logp, (ratio > 1 + eps_high) | (ratio < 1 - epsilon_low)


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    max_completion_length: int,
    num_sequences: int | None = None,
    num_tokens: int | float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar.

    The batch may be one micro-batch of a larger one: ``num_sequences`` / ``num_tokens`` are the totals
    over the whole optimizer batch, so summing micro-batch losses gives the full-batch loss.

    - ``grpo``: mean over each completion's tokens, then mean over completions (long completions'
      tokens weigh less — the length bias Dr. GRPO points out);
    - ``bnpo``: token mean over this micro-batch, weighted by its share of the sequences;
    - ``dapo``: token mean over the whole batch (every token weighs the same);
    - ``dr_grpo``: token sum / (num_sequences × max_completion_length), a constant normaliser.

    Worked example, two completions with per-token losses ``[1, 1]`` and ``[4, 0 (pad)]``, T_max = 4:
    grpo = (1 + 4) / 2 = 2.5; dapo = bnpo = (1 + 1 + 4) / 3 = 2.0; dr_grpo = 6 / (2 · 4) = 0.75.
    """
    mask = mask.to(per_token.dtype)
    total = (per_token * mask).sum()
    n_seq = num_sequences if num_sequences is not None else per_token.shape[0]
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / n_seq
    if loss_type == "bnpo":
        return total / mask.sum().clamp(min=1) * (per_token.shape[0] / n_seq)
    if loss_type == "dapo":
        n_tok = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
        return total / n_tok
    if loss_type == "dr_grpo":
        return total / (n_seq * max_completion_length)
    raise ValueError(f"loss_type must be grpo, bnpo, dapo or dr_grpo, got {loss_type!r}")


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_range: float | None = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss per token: ``½·max((V − R)², (V_clip − R)²)`` with
    ``V_clip = V_old + clip(V − V_old, −c, c)``, so one update cannot move a value estimate far from the one
    the advantages were computed with. ``clip_range=None`` gives the plain ``½(V − R)²``.
    Returns ``(per_token_loss [B, T], clipped [B, T] bool)`` where ``clipped`` marks tokens where the clipped
    term is the larger (its gradient is then zero).

    Worked example: V_old = 0.5, R = 1.0, c = 0.2. V = 0.9 → V_clip = 0.7: max(0.005, 0.045) = 0.045 → loss
    0.045, clipped. V = 0.6 → V_clip = 0.6: loss ½·0.16 = 0.08, not clipped.
    """
    values, returns = values.float(), returns.float()
    unclipped = (values - returns) ** 2
    if clip_range is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    v_clip = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    clipped = (v_clip - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), clipped > unclipped


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """How far an update moved the policy from the sampling one: mean ``½(log π_θ − log π_old)²`` (k2)."""
    return masked_mean(0.5 * (logp.detach().float() - old_logp.float()) ** 2, mask).item()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1 (0 if the mask is empty)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


# ----------------------------------------------------------------------------- the registry of policy losses

POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {}


def register_policy_loss(name: str):
    """Register ``fn(logp, old_logp, advantages, mask, *, epsilon_low, epsilon_high, level, dual_clip, **_) ->
    (per_token_loss [B, T], clipped [B, T] bool)`` as ``rl.policy_loss: name``."""

    def register(fn):
        POLICY_LOSSES[name] = fn
        return fn

    return register


def policy_loss(name: str):
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r} (registered: {', '.join(POLICY_LOSSES)})")
    return POLICY_LOSSES[name]


@register_policy_loss("clip")
def clip_loss(
    logp, old_logp, advantages, mask, *, epsilon_low=0.2, epsilon_high=None, level="token", dual_clip=None, **_
):
    """The clipped surrogate of PPO, GRPO, DAPO (clip-higher) and GSPO (``level='sequence'``), with PPO's optional
    dual clip: :func:`clipped_surrogate`."""
    return clipped_surrogate(logp, old_logp, advantages, mask, epsilon_low, epsilon_high, level, dual_clip)


@register_policy_loss("cispo")
def cispo_loss(
    logp, old_logp, advantages, mask, *, epsilon_low=0.2, epsilon_high=None, level="token", dual_clip=None, **_
):
    """MiniMax-M1's clipped, stop-gradient importance weight on the REINFORCE term: :func:`cispo_surrogate`.
    (``dual_clip`` bounds the clipped surrogate only: CISPO's weight is already bounded.)"""
    return cispo_surrogate(logp, old_logp, advantages, mask, epsilon_low, epsilon_high, level)
