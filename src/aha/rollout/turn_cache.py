"""The KV cache of a batch of episodes, kept from one turn to the next.

A turn of :func:`aha.rollout.episodes.run_episodes` is one batched generate over the episodes still running. Without
this, each turn would re-encode each episode's whole context (prompt, every earlier turn and answer) before it decodes:
a cost that grows with the square of the turns. :class:`TurnCache` keeps the engine's KV cache between turns and
encodes only what was added since: the environment's answer, and the model's last token (decoding draws it but never
feeds it back).

Rows are the episodes still running, in the order asked; an episode that stops leaves the cache for good
(``batch_select_indices``). The columns are shared: a turn appends a chunk as wide as its longest addition (left-padded
per row, so each row's last column is its newest token) and then one column per decoded token. A column a row does not
use (chunk padding, tokens decoded past the row's end) is masked out, and positions follow the mask
(:func:`~aha.modeling.logprobs.position_ids_from_mask`'s rule), so each row's logits are those of its context alone:
what a training pass over the episode computes (equal to float rounding, the ``exact_logprobs`` contract).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from aha.rollout import Rollouts, SamplingParams

if TYPE_CHECKING:
    from aha.rollout.hf import HFEngine


class TurnCache:
    """``generate(episodes, contexts, sampling)``: one turn of the episodes ``episodes`` (indices below ``size``) whose
    contexts are now ``contexts``; each context must extend what the cache holds for its episode."""

    def __init__(self, engine: HFEngine, size: int):
        self.engine = engine
        self.rows: list[int] = []  # the episode of each cache row
        self.known: list[list[int]] = [[] for _ in range(size)]  # per episode: the tokens its cache rows hold
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, columns]: 1 where a row holds one of its tokens

    def _keep(self, episodes: list[int]) -> None:
        """Drop the rows of the episodes that stopped (the others stay, in the order of ``episodes``)."""
        if self.cache is not None and self.mask is not None and episodes != self.rows:
            index = torch.tensor([self.rows.index(i) for i in episodes], device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask = self.mask[index]
        self.rows = list(episodes)

    def additions(self, episodes: list[int], contexts: list[list[int]]) -> list[list[int]]:
        """Each episode's tokens that the cache does not hold yet."""
        added = []
        for i, context in zip(episodes, contexts):
            held = self.known[i]
            if context[: len(held)] != held or len(context) == len(held):
                raise ValueError(f"episode {i}: its context must extend the tokens its cache holds")
            added.append(context[len(held) :])
        return added

    @torch.no_grad()
    def generate(self, episodes: list[int], contexts: list[list[int]], sampling: SamplingParams) -> Rollouts:
        engine = self.engine
        added = self.additions(episodes, contexts)
        self._keep(episodes)
        chunk, chunk_mask = engine.left_pad(added)
        before = 0 if self.mask is None else self.mask.sum(1, keepdim=True)
        positions = (before + chunk_mask.cumsum(1) - 1).clamp(min=0)
        mask = chunk_mask if self.mask is None else torch.cat([self.mask, chunk_mask], 1)
        with engine._decoding():
            step, state = engine.continue_from(self.cache, mask, positions)
            drawn = engine.sample(step, step(chunk), sampling)
        roll = engine.rollouts([list(c) for c in contexts], drawn, sampling)
        # decoding fed back every drawn token but the last, for every row. A row keeps its completion but the last
        # token (the next turn encodes that one again with the environment's answer, so it always has something to
        # encode, even an answer of no tokens); the columns past it are masked out.
        fed = drawn[0].shape[1] - 1
        self.cache, self.mask = state["cache"], state["mask"]
        start = self.mask.shape[1] - fed
        for r, (i, completion) in enumerate(zip(episodes, roll.completion_ids)):
            kept = max(0, min(len(completion) - 1, fed))
            self.mask[r, start + kept :] = 0
            self.known[i] = list(contexts[r]) + completion[:kept]
        return roll
