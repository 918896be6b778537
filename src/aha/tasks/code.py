"""Small Python function problems scored by running tests in the sandbox (the ``code`` reward).

The shipped set (``aha/tasks/data/code_problems.jsonl``, 53 problems written for aha) has one JSON
object per line::

    {"id": "add", "entry_point": "add", "prompt": "Write a Python function `add(a, b)` that ...",
     "solution": "def add(a, b):\\n    return a + b\\n", "tests": "assert add(1, 2) == 3\\n..."}

``task.path`` points at another file of the same shape instead (``prompt`` and ``tests`` are
required; HumanEval's ``check(candidate)`` tests work if the tests call it). Each prompt gets the
instruction to answer in a fenced block; ``answer`` is the reference solution in such a block (what
an SFT warm-up imitates). A fifth of the rows (at most ``task.num_eval``) is held out, drawn with
``task.seed``.

>>> task = code_task(TaskConfig(name="code"))                           # doctest: +SKIP
>>> len(task.train), len(task.eval), task.verifier                       # doctest: +SKIP
(43, 10, 'code')
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

from aha.config import TaskConfig
from aha.data.load import DataError
from aha.rewards.code import code
from aha.tasks.base import Task
from aha.tasks.jsonl import read_jsonl

INSTRUCTION = "Answer with the complete function in a single ```python code block."


def shipped_problems_path() -> Path:
    """The JSONL of problems that ships inside the package."""
    return Path(str(resources.files("aha.tasks") / "data" / "code_problems.jsonl"))


def code_rows(path: Path | None = None) -> list[dict]:
    """Task rows from ``path`` (default: the shipped problems): prompt + instruction, tests, answer."""
    path = Path(path) if path is not None else shipped_problems_path()
    rows = []
    for i, row in enumerate(read_jsonl(path, ("prompt", "tests")), 1):
        if not isinstance(row["prompt"], str) or not isinstance(row["tests"], str):
            raise DataError(f"{path}: row {i}: 'prompt' and 'tests' must be text")
        row = dict(row)
        row["prompt"] = f"{row['prompt'].rstrip()}\n{INSTRUCTION}"
        if isinstance(row.get("solution"), str):
            row["answer"] = f"```python\n{row['solution'].rstrip()}\n```"
        rows.append(row)
    return rows


def code_task(cfg: TaskConfig) -> Task:
    rows = code_rows(cfg.path)
    random.Random(cfg.seed).shuffle(rows)
    n_eval = min(cfg.num_eval, len(rows) // 5)
    return Task("code", rows[n_eval:], rows[:n_eval], alphabet=None, rewards={"code": code}, verifier="code")
