"""Rollout engines: sample completions from the old policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=list)
    greedy: bool = False


@dataclass
class Rollouts:
    """``n`` completions per prompt, grouped: rows ``i*n … i*n+n-1`` belong to prompt ``i``."""

    prompt_ids: list[list[int]]  # one entry per completion (the prompt repeated n times)
    completion_ids: list[list[int]]  # EOS included when the sampler stopped on it
    logprobs: list[list[float]]  # the sampler's log π_old(token) at its temperature, one per completion token
    finish_reasons: list[str]  # 'stop' (EOS or stop string) or 'length'

    def __len__(self) -> int:
        return len(self.completion_ids)


class Engine(Protocol):
    def generate(self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams) -> Rollouts: ...

    def update_weights(self, state: dict[str, torch.Tensor] | None = None) -> None: ...
