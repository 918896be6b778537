"""Tasks: prompts + reference answers + the reward functions that score them, with a held-out split.

A task row is a dict with at least ``prompt`` (str) and ``answer`` (str); every other key is an extra
column handed to reward functions as a keyword list (TRL's convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from aha.config import TaskConfig
from aha.data.load import DataError  # noqa: F401 (its historical home)


@dataclass
class Task:
    name: str
    train: list[dict]
    eval: list[dict]
    alphabet: str | None = None  # characters a tiny char-level model needs; None = any text
    rewards: dict[str, Callable] = field(default_factory=dict)  # task-specific reward functions by name
    verifier: str = "accuracy"  # the reward that decides correctness for eval/accuracy
    note: str | None = None  # what a run should tell the user about the data (e.g. how the held-out split was made)


def build_task(cfg: TaskConfig) -> Task:
    if cfg.name == "arithmetic":
        from aha.tasks.arithmetic import arithmetic_task

        return arithmetic_task(cfg)
    if cfg.name == "countdown":
        from aha.tasks.countdown import countdown_task

        return countdown_task(cfg)
    if cfg.name == "code":
        from aha.tasks.code import code_task

        return code_task(cfg)
    from aha.tasks.jsonl import jsonl_task

    return jsonl_task(cfg)
