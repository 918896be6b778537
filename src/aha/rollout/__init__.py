"""Rollout engines: sample completions from the old policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=list)
    greedy: bool = False
    min_new_tokens: int = 0  # EOS cannot be sampled before this many tokens (fixed lengths for benchmarks)


@dataclass
class Rollouts:
    """``n`` completions per prompt, grouped: rows ``i*n … i*n+n-1`` belong to prompt ``i``."""

    prompt_ids: list[list[int]]  # one entry per completion (the prompt repeated n times)
    completion_ids: list[list[int]]  # EOS included when the sampler stopped on it
    logprobs: list[list[float]]  # the sampler's log π_old(token) at its temperature, one per completion token
    finish_reasons: list[str]  # 'stop' (EOS or stop string) or 'length'
    # multi-turn episodes (aha.rollout.episodes): 1 = the model's token, 0 = the environment's; None = all the model's
    completion_mask: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.completion_ids)

    def select(self, index: list[int]) -> Rollouts:
        """The completions at ``index``, in that order."""
        fields: list[Any] = [None if self._none(f) else [getattr(self, f)[i] for i in index] for f in _FIELDS]
        return Rollouts(*fields)

    def concat(self, other: Rollouts) -> Rollouts:
        masked = self.completion_mask is not None or other.completion_mask is not None
        return Rollouts(
            self.prompt_ids + other.prompt_ids,
            self.completion_ids + other.completion_ids,
            self.logprobs + other.logprobs,
            self.finish_reasons + other.finish_reasons,
            self.mask_rows() + other.mask_rows() if masked else None,
        )

    def mask_rows(self) -> list[list[int]]:
        """The completion mask, all ones where none is kept (every token the model's)."""
        if self.completion_mask is not None:
            return self.completion_mask
        return [[1] * len(c) for c in self.completion_ids]

    def _none(self, name: str) -> bool:
        return getattr(self, name) is None


_FIELDS = ("prompt_ids", "completion_ids", "logprobs", "finish_reasons", "completion_mask")


@runtime_checkable
class Engine(Protocol):
    """What the RL loop asks of a sampler. The in-process :class:`~aha.rollout.hf.HFEngine` (and its compiled
    variant) implement it; a remote rollout worker (Ray) or a vLLM engine implements the same.

    - ``generate``: ``n`` completions per prompt, grouped, with the sampler's own logprobs and finish reasons;
    - ``sync(policy)``: sample from ``policy``'s current weights from now on; returns the new ``weights_version``
      (the loop checks it before it samples);
    - ``exact_logprobs``: whether the sampler's logprobs are the ones a training pass would compute (same weights,
      same precision); if not, ``rl.old_logprobs: auto`` recomputes them in a no-grad pass.
    """

    weights_version: int

    @property
    def exact_logprobs(self) -> bool: ...

    def generate(self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams) -> Rollouts: ...

    def sync(self, policy: torch.nn.Module) -> int: ...


def pack_rollouts(roll: Rollouts, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``[left-padded prompt | right-padded completion]`` tensors plus the completion mask (0 also on a multi-turn
    episode's environment tokens) and the sampler's logprobs, padded to the batch's longest prompt and completion."""
    B = len(roll)
    P = max(len(p) for p in roll.prompt_ids)
    C = max(1, max(len(c) for c in roll.completion_ids))
    input_ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + C), dtype=torch.long)
    mask = torch.zeros((B, C), dtype=torch.float32)
    sampler_logp = torch.zeros((B, C), dtype=torch.float32)
    for i, (p, c, lp) in enumerate(zip(roll.prompt_ids, roll.completion_ids, roll.logprobs)):
        input_ids[i, P - len(p) : P] = torch.tensor(p)
        attention[i, P - len(p) : P + len(c)] = 1
        if c:
            input_ids[i, P : P + len(c)] = torch.tensor(c)
            mask[i, : len(c)] = 1 if roll.completion_mask is None else torch.tensor(roll.completion_mask[i])
            sampler_logp[i, : len(c)] = torch.tensor(lp)
    truncated = torch.tensor([r == "length" for r in roll.finish_reasons])
    out = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "mask": mask,
        "sampler_logp": sampler_logp,
        "truncated": truncated,
    }
    return {k: v.to(device) for k, v in out.items()}
