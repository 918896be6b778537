"""Your own dataset as a task: any file :mod:`aha.data.load` reads (JSONL, JSON, CSV, Parquet, a ``save_to_disk``
directory, ``hf:OWNER/NAME``) with a prompt column and (for accuracy) an answer column.

Every column reaches the reward functions under its own name, as in TRL (``solution=[...]``). The prompt column
is also ``prompt``; where the answer column is named otherwise, it is also ``answer`` (the built-in accuracy's
keyword), unless the data has an ``answer`` column of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aha.config import TaskConfig
from aha.data.load import DataError, load_rows, text_problem
from aha.tasks.base import Task


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a data file (every format :func:`~aha.data.load.load_rows` reads); one-line DataError otherwise."""
    return load_rows(path, required, "data file")


def normalise_rows(rows: list[dict], cfg: TaskConfig, name: Any) -> list[dict]:
    """Each row with ``prompt`` (text or chat messages) and, where the answer column has another name, its
    ``answer`` alias (as text); every other column unchanged."""
    out = []
    for i, row in enumerate(rows, 1):
        row = dict(row)
        prompt = row.get(cfg.prompt_column)
        if problem := text_problem(prompt):
            raise DataError(f"{name}: row {i}: {cfg.prompt_column!r} {problem}")
        row["prompt"] = prompt
        if cfg.answer_column in row and (cfg.answer_column == "answer" or "answer" not in row):
            row["answer"] = str(row[cfg.answer_column])
        out.append(row)
    return out


def jsonl_task(cfg: TaskConfig) -> Task:
    """The task over ``cfg.path``; the held-out split is ``cfg.eval_path``, else the last
    ``min(task.num_eval, a fifth of the rows)`` rows of ``cfg.path`` (the task's ``note`` says so; the run prints it)."""
    if cfg.path is None:
        raise DataError(
            f"task.name={cfg.name} needs task.path: a .jsonl/.json/.csv/.parquet file, a save_to_disk "
            "directory or hf:OWNER/NAME"
        )
    rows = normalise_rows(load_rows(cfg.path, (cfg.prompt_column,), "data file"), cfg, cfg.path)
    if cfg.eval_path is not None:
        train = rows
        held_out = normalise_rows(load_rows(cfg.eval_path, (cfg.prompt_column,), "eval file"), cfg, cfg.eval_path)
    else:
        n_eval = min(cfg.num_eval, len(rows) // 5)
        train, held_out = rows[: len(rows) - n_eval], rows[len(rows) - n_eval :]
        note = (
            f"{cfg.path}: {len(train)} rows to train on, the last {n_eval} held out for eval (task.num_eval="
            f"{cfg.num_eval}, at most a fifth of the rows; task.eval_path: a held-out file of its own)"
        )
        return Task(Path(str(cfg.path)).stem, train, held_out, note=note)
    return Task(Path(str(cfg.path)).stem, train, held_out)
