"""The training pass of the policy (and of PPO's critic): what the update phase differentiates."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from aha.critic import Critic
from aha.modeling.logprobs import completion_forward


def policy_forward(
    policy: nn.Module,
    critic: Critic | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float = 1.0,
    entropy: str = "none",
    lean: bool = False,
):
    """One pass for the update: ``(logp [B, C], entropy [B, C] | None, values [B, C] | None)``.

    With a ``head`` critic the values come from the policy's own forward pass; a ``separate`` critic runs its
    own trunk. ``entropy`` and ``lean`` as in :func:`completion_forward`.
    """
    shared = critic is not None and critic.shared
    logp, ent, hidden = completion_forward(
        policy, input_ids, attention_mask, completion_len, temperature, entropy, shared, lean
    )
    values = None
    if shared:
        assert critic is not None  # (shared implies a critic)
        values = critic.values_from_hidden(cast(torch.Tensor, hidden))  # (asked for: shared)
    elif critic is not None:
        values = critic(input_ids, attention_mask, completion_len, lean)
    return logp, ent, values
