"""Any JSONL file with a prompt column and an answer column."""

from __future__ import annotations

import json
from pathlib import Path

from aha.config import TaskConfig
from aha.tasks import DataError, Task


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSONL file; a missing file, bad JSON or a missing required column → one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    for lineno, line in enumerate(text.split("\n"), 1):  # (not splitlines: U+2028 may sit inside a JSON string)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for col in required:
            if row.get(col) in (None, ""):
                raise DataError(f"{path}:{lineno}: row has no {col!r} column (keys: {', '.join(row) or 'none'})")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _normalise(rows: list[dict], cfg: TaskConfig, path: Path) -> list[dict]:
    out = []
    for i, row in enumerate(rows, 1):
        row = dict(row)
        row["prompt"] = row.pop(cfg.prompt_column)
        if not isinstance(row["prompt"], (str, list)):
            raise DataError(f"{path}: row {i}: {cfg.prompt_column!r} must be text or a list of chat messages, "
                            f"got {type(row['prompt']).__name__}")
        if cfg.answer_column in row:
            row["answer"] = str(row.pop(cfg.answer_column))
        out.append(row)
    return out


def jsonl_task(cfg: TaskConfig) -> Task:
    rows = _normalise(read_jsonl(cfg.path, (cfg.prompt_column,)), cfg, cfg.path)
    if cfg.eval_path is not None:
        train, held_out = rows, _normalise(read_jsonl(cfg.eval_path, (cfg.prompt_column,)), cfg, cfg.eval_path)
    else:
        n_eval = min(cfg.num_eval, len(rows) // 5)
        train, held_out = rows[: len(rows) - n_eval], rows[len(rows) - n_eval:]
    return Task(Path(cfg.path).stem, train, held_out)
