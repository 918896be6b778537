"""PPO's critic: a value model ``V(prefix)`` for every completion token.

Two shapes (``critic.kind``):

- ``separate``: its own transformer trunk plus a linear value head — a copy of the policy RL starts from, or
  a reward model's trunk and score head (``critic.init_from``). The classic actor-critic: a second model's
  weights, gradients, optimizer state and forward/backward passes. This is the cost GRPO removes.
- ``head``: a value head on the policy's own last hidden state. One forward pass serves both, at the price
  of value gradients flowing into the policy's trunk.

Values are aligned with :func:`aha.modeling.logprobs.completion_logprobs`: position ``t`` is the value of the
prefix that *predicts* completion token ``t`` (the state before the action).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from aha.algos.advantages import advantage_estimator
from aha.config.objective import CriticConfig
from aha.errors import AhaError, first_line
from aha.modeling.logprobs import completion_states


class CriticError(AhaError, RuntimeError):
    """The critic cannot be built (e.g. a reward-model path that does not load)."""


class Critic(nn.Module):
    """A value head, with its own trunk (``separate``) or reading the policy's hidden states (``head``)."""

    def __init__(self, hidden_size: int, trunk: nn.Module | None = None, head: nn.Linear | None = None):
        super().__init__()
        self.trunk = trunk
        self.head = head if head is not None else nn.Linear(hidden_size, 1)
        if head is None:
            nn.init.normal_(self.head.weight, std=1 / (hidden_size + 1) ** 0.5)
            nn.init.zeros_(self.head.bias)

    @property
    def shared(self) -> bool:
        return self.trunk is None

    def values_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, C, H]`` hidden states → ``[B, C]`` values, the head in fp32 even under bf16 autocast."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.head(hidden.float()).squeeze(-1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_len: int, lean: bool = False
    ) -> torch.Tensor:
        """Values ``[B, C]`` of the prefixes before each of the last ``completion_len`` tokens (separate trunk)."""
        assert self.trunk is not None  # (a separate critic: its own trunk)
        return self.values_from_hidden(completion_states(self.trunk, input_ids, attention_mask, completion_len, lean))


def build_critic(critic_cfg: CriticConfig, algo: str, policy: nn.Module, device: torch.device) -> Critic | None:
    """The critic ``algo`` (``rl.algo``: ppo) needs, as the config's ``critic`` section describes it (None for the
    critic-free algorithms), on ``device`` in train mode.

    Built after any SFT imitation steps (sft.imitation_steps), so 'policy' means the policy RL starts from."""
    if not advantage_estimator(algo).needs_critic:
        return None
    hidden = cast(Any, policy).config.hidden_size  # (a transformers model's config)
    if critic_cfg.kind == "head":
        if critic_cfg.init_from != "policy":
            raise CriticError(
                "critic.init_from: a reward model needs critic.kind 'separate' (a 'head' critic shares the policy's trunk)"
            )
        critic = Critic(hidden)
    elif critic_cfg.init_from == "policy":
        source: Any = copy.deepcopy(policy)  # (a transformers or peft model)
        if hasattr(source, "merge_and_unload"):  # LoRA: the critic gets the merged weights, trained in full
            source = source.merge_and_unload()
        critic = Critic(hidden, trunk=source.get_decoder())
        del source
    else:
        critic = _critic_from_reward_model(Path(critic_cfg.init_from), hidden)
    critic.requires_grad_(True)
    return critic.to(device).train()


def _critic_from_reward_model(path: Path, policy_hidden: int) -> Critic:
    from transformers import AutoModelForSequenceClassification

    if not (path / "config.json").is_file():
        raise CriticError(f"critic.init_from: {str(path)!r} is not a local HF model directory (no config.json)")
    try:
        rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise CriticError(f"critic.init_from: could not load a reward model from {path}: {first_line(e)}") from None
    head = getattr(rm, "score", None)
    hidden = rm.config.hidden_size
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        head = None  # not a one-output score head: start a fresh value head on the reward model's trunk
    else:
        new = nn.Linear(hidden, 1)
        with torch.no_grad():
            new.weight.copy_(head.weight)
            new.bias.copy_(head.bias if head.bias is not None else torch.zeros(1))
        head = new
    return Critic(hidden, trunk=rm.base_model, head=head)
