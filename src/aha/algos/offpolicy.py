"""Off-policy correction for asynchronous rollouts: truncated importance sampling (TIS).

A batch sampled ``k`` weight versions ago comes from a *behaviour* policy π_behav that is no longer the trainer's
π_old (AReaL's "proximal" policy: the trainer's weights before this update). The clipped surrogate keeps its ratio
π_θ/π_old (its trust region is around the trainer's own weights, AReaL's decoupled PPO objective), and each token's
loss is multiplied by the importance weight ``w = π_old / π_behav``, truncated at a cap ``C`` so one improbable
token cannot dominate the batch (TRL's ``vllm_importance_sampling_correction``, Yao et al.'s TIS):

    loss_t = w_t · surrogate_t,   w_t = min(exp(log π_old(o_t) − log π_behav(o_t)), C)   (no gradient through w)

``level='sequence'`` uses one weight per completion, ``min(exp(Σ_t (log π_old − log π_behav)), C)``, over its
unmasked tokens (TRL's ``sequence_truncate``): unbiased for the sequence, but a long completion's sum of small
per-token differences compounds, so it is clipped far more often than the token weights.
"""

from __future__ import annotations

import torch


def truncated_importance_weights(
    old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, cap: float, level: str = "token"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w [B, T], clipped [B, T] bool)``: the truncated importance weight of each token, and where the cap cut it.

    ``old_logp`` is the trainer's log π_old of the sampled tokens (its weights before this update), ``behaviour_logp``
    the sampler's (the weights that sampled them); ``mask`` [B, T] marks the tokens that count. ``w`` carries no
    gradient and is 1 where the two policies agree (masked positions: 1, not counted).

    Worked example, cap C = 2, one completion of three tokens with log π_old − log π_behav = [ln 1.5, ln 3, −ln 2]:
    token level: w = [1.5, 2 (3 capped), 0.5], clipped = [F, T, F];
    sequence level: Σ = ln(1.5·3·0.5) = ln 2.25 → w = 2 (capped) on every token, all clipped.
    """
    log_w = (old_logp.detach().float() - behaviour_logp.detach().float()) * mask
    if level == "sequence":
        log_w = log_w.sum(-1, keepdim=True).expand_as(old_logp)
    elif level != "token":
        raise ValueError(f"importance weight level must be 'token' or 'sequence', got {level!r}")
    raw = torch.exp(log_w)
    return raw.clamp(max=cap), raw > cap


def importance_weight_stats(weights: torch.Tensor, clipped: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """``is/weight_mean`` and ``is/clipped_share`` (means over the counted tokens) and ``is/weight_max``.

    Worked example: weights [[1.5, 2, 0.5], [1, 1, 9 (masked)]], the first row's 2 clipped: mean (1.5+2+0.5+1+1)/5 =
    1.2, max 2, clipped share 1/5 = 0.2."""
    m = mask.bool()
    n = m.sum().clamp(min=1)
    if not m.any():
        return {"is/weight_mean": 1.0, "is/weight_max": 1.0, "is/clipped_share": 0.0}
    return {
        "is/weight_mean": (weights[m].sum() / n).item(),
        "is/weight_max": weights[m].max().item(),
        "is/clipped_share": (clipped[m].sum() / n).item(),
    }
