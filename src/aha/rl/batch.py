"""The typed batch the RL phases pass along: one step's experience, G completions per prompt, grouped.

``collect`` fills the sampled part (task rows, rollouts, texts, rewards); ``score`` the no-grad passes (packed
tensors, old / reference logprobs, the per-token KL that goes into the reward, the critic's values);
``advantages`` the advantages and PPO's returns. ``select`` / ``concat`` / ``head`` work on whole groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from aha.rollout import Rollouts


@dataclass
class RolloutBatch:
    group_size: int  # G: rows i·G … i·G+G−1 belong to prompt i
    rows: list[dict]  # the task rows, one per prompt
    rollouts: Rollouts  # G completions per prompt
    texts: list[str]  # the decoded completions
    rewards: list[float]  # the weighted total reward of each completion
    per_fn: dict[str, list]  # each reward function's values (None = no opinion)
    # multi-turn (env): each completion's episode (aha.env.Episode: counters) and transcript (chat messages)
    episodes: list | None = None
    transcripts: list | None = None
    # ---- the score phase
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # pack_rollouts: input_ids, attention_mask, mask, …
    old_logp: torch.Tensor | None = None  # [B, C] log π_old of the sampled tokens
    ref_logp: torch.Tensor | None = None  # [B, C] log π_ref (β > 0)
    kl: torch.Tensor | None = None  # [B, C] KL to the reference that goes into the reward (not GRPO)
    values: torch.Tensor | None = None  # [B, C] the critic's V(prefix) (PPO)
    # ---- the advantages phase
    advantages: torch.Tensor | None = None  # [B] or [B, C]
    returns: torch.Tensor | None = None  # [B, C] the critic's regression target (PPO)
    # ---- the log phase
    judgements: list | None = None  # aha.track.reasoning's verdict on each completion (log.reasoning_metrics)

    def __len__(self) -> int:
        return len(self.rollouts)

    @property
    def n_groups(self) -> int:
        return len(self.rows)

    @property
    def mask(self) -> torch.Tensor:
        """``[B, C]`` the completion tokens that count in the loss (after the score phase)."""
        return self.tensors["mask"]

    def select(self, groups: list[bool]) -> RolloutBatch:
        """The groups where ``groups`` is True (a sampled batch: before the score phase)."""
        G = self.group_size
        index = [i for g, keep in enumerate(groups) if keep for i in range(g * G, (g + 1) * G)]
        return replace(
            self,
            rows=[r for r, keep in zip(self.rows, groups) if keep],
            rollouts=self.rollouts.select(index),
            texts=[self.texts[i] for i in index],
            rewards=[self.rewards[i] for i in index],
            per_fn={n: [v[i] for i in index] for n, v in self.per_fn.items()},
            episodes=None if self.episodes is None else [self.episodes[i] for i in index],
            transcripts=None if self.transcripts is None else [self.transcripts[i] for i in index],
        )

    def concat(self, other: RolloutBatch) -> RolloutBatch:
        """This batch's groups followed by ``other``'s (both sampled, not yet scored)."""
        return replace(
            self,
            rows=self.rows + other.rows,
            rollouts=self.rollouts.concat(other.rollouts),
            texts=self.texts + other.texts,
            rewards=self.rewards + other.rewards,
            per_fn={n: self.per_fn.get(n, []) + v for n, v in other.per_fn.items()},
            episodes=None if self.episodes is None else self.episodes + (other.episodes or []),
            transcripts=None if self.transcripts is None else self.transcripts + (other.transcripts or []),
        )

    def head(self, n_groups: int) -> RolloutBatch:
        """The first ``n_groups`` groups."""
        return self.select([g < n_groups for g in range(self.n_groups)])
