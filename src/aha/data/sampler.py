"""The order a run visits its training rows in: seeded, epoch after epoch, resumable from a checkpoint."""

from __future__ import annotations

import random


class PromptSampler:
    """Walks through the training rows in a seeded random order, epoch after epoch; its position is part
    of a checkpoint so a resumed run sees the same prompts as an uninterrupted one."""

    def __init__(self, n_rows: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n_rows, seed, 0, 0
        self._order = self._perm()

    def _perm(self) -> list[int]:
        return random.Random(self.seed * 1_000_003 + self.epoch).sample(range(self.n), self.n)

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._perm()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._perm()


def length_groups(lengths: list[int], size: int) -> list[list[int]]:
    """Micro-batches of like lengths (``train.group_by_length``), as lists of row indices: the rows sorted by length,
    shortest first, and cut so that a micro-batch padded to its longest row holds no more tokens than ``size`` rows of
    the longest of all would. Short rows go many to a micro-batch, long ones ``size`` or fewer: fewer passes, and
    little padding, in no more memory than micro-batches of ``size`` rows.

    >>> length_groups([5, 50, 4, 6, 48, 5], 2)  # (4 rows of at most 6 tokens: 24 ≤ 2 × 50; then 48 and 50: 100)
    [[2, 0, 5, 3], [4, 1]]
    """
    budget = size * max(lengths, default=0)
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[i] <= budget:  # (sorted: row i is the group's longest)
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
