"""Task files for the ranking app: one JSON object per line, ``{"prompt", "completions": [K texts]}`` plus any
columns (kept for the export). A bad line is one :class:`LabelError` naming the file, the line and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aha.errors import AhaError

MAX_COMPLETIONS = 26  # the keyboard picks with 1..9, then letters (the page shows each card's key)


class LabelError(AhaError, ValueError):
    """A user's mistake with the ranking app (a bad tasks file, an unknown labeler); the message says the fix."""


def check_task(row: Any, where: str = "task") -> tuple[Any, list, dict]:
    """``(prompt, completions, extra)`` of one tasks row, or LabelError naming what is wrong."""
    if not isinstance(row, dict):
        raise LabelError(f"{where}: expected a JSON object with 'prompt' and 'completions', got {type(row).__name__}")
    for key in ("prompt", "completions"):
        if key not in row:
            raise LabelError(f'{where}: missing field \'{key}\' (a task is {{"prompt": ..., "completions": [...]}})')
    prompt, comps = row["prompt"], row["completions"]
    if not _is_text(prompt):
        raise LabelError(f"{where}: 'prompt' must be a text or a list of chat messages")
    if not isinstance(comps, list) or not 2 <= len(comps) <= MAX_COMPLETIONS:
        n = len(comps) if isinstance(comps, list) else type(comps).__name__
        raise LabelError(f"{where}: 'completions' must be a list of 2 to {MAX_COMPLETIONS} texts, got {n}")
    for i, c in enumerate(comps):
        if not _is_text(c):
            raise LabelError(f"{where}: completion {i} must be a text or a list of chat messages")
    return prompt, comps, {k: v for k, v in row.items() if k not in ("prompt", "completions")}


def _is_text(x: Any) -> bool:
    return isinstance(x, str) or (
        isinstance(x, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in x)
    )


def jsonl_rows(path: Path, option: str, if_empty: str) -> list[tuple[int, Any]]:
    """``(line number, parsed value)`` of each non-blank line of the JSONL file given as ``option``; LabelError for a
    missing or unreadable file, a line that is not JSON, or no rows (``if_empty`` says what is missing)."""
    if not path.is_file():
        raise LabelError(f"{option} {path}: file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LabelError(f"{option} {path}: cannot read it ({e})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise LabelError(f"{path} line {n}: not valid JSON ({e.msg})") from None
    if not rows:
        raise LabelError(f"{option} {path}: {if_empty}")
    return rows


def read_tasks(path: Path) -> list[dict]:
    """Rows of a tasks JSONL file, each checked; LabelError naming the file and line of a bad one."""
    rows = jsonl_rows(path, "--tasks", "no tasks in it (one JSON object per line: prompt, completions)")
    for n, row in rows:
        check_task(row, f"{path} line {n}")
    return [row for _, row in rows]
