"""What a task is: its training and held-out rows, the alphabet a tiny model needs, its own reward functions and
the one that decides correctness."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Task:
    name: str
    train: list[dict]
    eval: list[dict]
    alphabet: str | None = None  # characters a tiny char-level model needs; None = any text
    rewards: dict[str, Callable] = field(default_factory=dict)  # task-specific reward functions by name
    verifier: str = "accuracy"  # the reward that decides correctness for eval/accuracy
    note: str | None = None  # what a run should tell the user about the data (e.g. how the held-out split was made)
