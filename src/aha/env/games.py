"""Built-in gym-style games, where the next observation depends on the last action.

:class:`GuessNumber`: the environment thinks of a whole number in a range; each model turn is a guess; the answer
is "Higher." or "Lower." until the guess is right (reward 1, done). A player that bisects needs at most
⌈log2(high - low + 1)⌉ guesses (7 for 1..100); one that guesses anywhere in the range left needs more. The turn
cap is the rollout's (``env.max_turns``), so the game itself never ends on a miss.

>>> game = GuessNumber()
>>> game.reset(seed=0, low=1, high=10, target=7)
'I am thinking of a whole number from 1 to 10. Guess it: answer with one number, and I will say higher or lower.'
>>> [(s.observation, s.reward, s.done) for s in (game.step("5"), game.step("I guess 8"), game.step("7"))]
[('Higher.', 0.0, False), ('Lower.', 0.0, False), ('Correct!', 1.0, True)]
"""

from __future__ import annotations

import random
import re
from typing import Any

from aha.env.base import Step

_INTEGER = re.compile(r"-?\d+")


class GuessNumber:
    """Guess-the-number with higher/lower feedback (gym-style: ``reset`` and ``step``).

    The row may carry ``low``, ``high`` (the range, inclusive; default 1 and 100) and ``target`` (else drawn from
    ``seed``). A turn's guess is the last whole number in its text; a turn with none, or one outside the range,
    is answered with a reminder and counts as a turn. Attributes after an episode: ``guesses`` (turns that named a
    number in range), ``invalid`` (turns that did not), ``solved``.
    """

    HIGHER, LOWER, CORRECT = "Higher.", "Lower.", "Correct!"

    def __init__(self, low: int = 1, high: int = 100):
        self.default_low, self.default_high = int(low), int(high)
        self.low, self.high, self.target = self.default_low, self.default_high, self.default_low
        self.guesses = self.invalid = 0
        self.solved = False

    def reset(self, seed: int | None = None, low: Any = None, high: Any = None, target: Any = None, **row: Any) -> str:
        """Start a game: the range from the row (or the defaults), the target from the row or drawn with ``seed``."""
        self.low = int(low) if low is not None else self.default_low
        self.high = int(high) if high is not None else self.default_high
        if self.low > self.high:
            raise ValueError(f"the range is empty: low {self.low} > high {self.high}")
        self.target = int(target) if target is not None else random.Random(seed).randint(self.low, self.high)
        if not self.low <= self.target <= self.high:
            raise ValueError(f"target {self.target} is outside {self.low}..{self.high}")
        self.guesses = self.invalid = 0
        self.solved = False
        return (
            f"I am thinking of a whole number from {self.low} to {self.high}. "
            "Guess it: answer with one number, and I will say higher or lower."
        )

    def step(self, action: str) -> Step:
        """One guess: "Higher." / "Lower." (reward 0), or "Correct!" (reward 1, done)."""
        if self.solved:
            return Step("The game is over.", 0.0, True)
        numbers = _INTEGER.findall(action or "")
        if not numbers:
            self.invalid += 1
            return Step(f"Answer with one whole number from {self.low} to {self.high}.", 0.0, False)
        guess = int(numbers[-1]) if len(numbers[-1]) <= 30 else self.high + 1  # (no 5000-digit ints)
        if not self.low <= guess <= self.high:
            self.invalid += 1
            return Step(f"{numbers[-1][:30]} is outside {self.low} to {self.high}. Guess again.", 0.0, False)
        self.guesses += 1
        if guess < self.target:
            return Step(self.HIGHER, 0.0, False)
        if guess > self.target:
            return Step(self.LOWER, 0.0, False)
        self.solved = True
        return Step(self.CORRECT, 1.0, True)


BUILTIN_ENVS: dict[str, type] = {"guess_number": GuessNumber}
