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
