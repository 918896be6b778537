"""Tasks: prompts + reference answers + the reward functions that score them, with a held-out split.

A task row is a dict with at least ``prompt`` (str) and ``answer`` (str); every other key is an extra
column handed to reward functions as a keyword list (TRL's convention).
"""

from __future__ import annotations

from aha.config import TaskConfig
from aha.data.load import DataError
from aha.tasks.arithmetic import arithmetic_task
from aha.tasks.base import Task
from aha.tasks.code import code_task
from aha.tasks.countdown import countdown_task
from aha.tasks.jsonl import jsonl_task

__all__ = ["DataError", "Task", "build_task"]
BUILDERS = {"arithmetic": arithmetic_task, "countdown": countdown_task, "code": code_task}


def build_task(cfg: TaskConfig) -> Task:
    """The task ``task.name`` names; 'dataset' reads your data from ``task.path``."""
    return BUILDERS.get(cfg.name, jsonl_task)(cfg)
