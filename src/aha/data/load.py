"""One loader for every dataset aha reads: RL prompts, SFT pairs, preference rankings.

Sources, by what ``source`` is:

- a ``.jsonl`` / ``.ndjson`` file: one JSON object per line, read line by line, so an error names the line and a
  column may mix types (a ranking with ties, ``[[0, 2], 1, 3]``);
- a ``.json`` file: a list of objects, or ``{"data": [...]}``;
- a ``.csv`` or ``.parquet`` file, a directory written by ``datasets``' ``save_to_disk``, or ``hf:OWNER/NAME[:SPLIT]``
  (a Hugging Face hub dataset; needs a network, or a copy in the local cache): through the ``datasets`` library;

Text files may start with a UTF-8 byte-order mark (as Windows editors write them).
- in memory: a ``datasets.Dataset`` or a list of dicts (the Python API).

:func:`load_rows` returns the rows as dicts, each with a label for error messages (``data.jsonl:3`` or
``data.parquet: row 3``). A missing file, an unknown format or an unreadable file is one :class:`DataError` line
that names the formats accepted.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aha.errors import AhaError, first_line


class DataError(AhaError, ValueError):
    """A malformed dataset (missing file, bad row); the message names the file, line and fix."""


ACCEPTED_FORMATS = (
    ".jsonl (one JSON object per line), .json (a list of objects), .csv, .parquet, a directory "
    "written by datasets' save_to_disk, or hf:OWNER/NAME[:SPLIT] (a hub dataset, with a network)"
)

Labelled = list[tuple[str, Any]]  # (where, row): "data.jsonl:3" or "data.parquet: row 3"


def load_rows(source: Any, required: Sequence[str] = (), what: str = "data") -> list[dict]:
    """The rows of ``source`` (see the module docstring) as dicts; a row that is not an object, or lacks one of the
    ``required`` columns (None or empty), is one :class:`DataError` line naming the file, the row and the keys it has.

    >>> load_rows([{"prompt": "1+1=", "answer": "2"}], ("prompt",))
    [{'prompt': '1+1=', 'answer': '2'}]
    """
    rows = []
    for where, row in labelled_rows(source, what):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for col in required:
            if row.get(col) in (None, ""):
                raise DataError(f"{where}: row has no {col!r} column (keys: {column_names(row) or 'none'})")
        rows.append(row)
    return rows


def column_names(row: dict) -> str:
    """A row's keys for a one-line message (a key with a line break or other unprintable character quoted)."""
    return ", ".join(k if isinstance(k, str) and k.isprintable() else repr(k) for k in row)


def text_problem(value: Any) -> str | None:
    """What keeps ``value`` from being a prompt or a completion — text, or a list of chat messages
    ``[{"role": "user", "content": "..."}, ...]`` — as the end of a sentence about it, or None.

    >>> text_problem("hi"), text_problem([{"role": "user", "content": "hi"}]), text_problem(3), text_problem(["hi"])
    (None, None, 'must be text or a list of chat messages, got int', "has a message 1 that is not {'role': ..., 'content': ...}")
    """
    if isinstance(value, str):
        return None
    if not isinstance(value, list):
        return f"must be text or a list of chat messages, got {type(value).__name__}"
    if not value:
        return "is an empty list of chat messages"
    for i, m in enumerate(value, 1):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), (str, list))
        ):
            return f"has a message {i} that is not {{'role': ..., 'content': ...}}"
        if not m["role"]:
            return f"has a message {i} with an empty role"
    return None


def labelled_rows(source: Any, what: str = "data") -> Labelled:
    """``(where, row)`` for every row of ``source``; no rows at all is an error."""
    if isinstance(source, (str, Path)):
        rows, name = _from_path(source, what), str(source)
    else:
        rows, name = _from_memory(source, what), "the dataset"
    if not rows:
        raise DataError(f"{name}: no rows")
    return rows


def _from_memory(data: Any, what: str) -> Labelled:
    if hasattr(data, "to_list") and hasattr(data, "column_names"):  # a datasets.Dataset
        return [(f"the dataset: row {i}", r) for i, r in enumerate(_drop_nulls(data.to_list()), 1)]
    if isinstance(data, (list, tuple)):
        return [(f"the dataset: row {i}", r) for i, r in enumerate(data, 1)]
    raise DataError(f"{what}: expected a path, a datasets.Dataset or a list of dicts, got {type(data).__name__}")


def _from_path(source: str | Path, what: str) -> Labelled:
    text = str(source)
    if text.startswith("hf:"):
        return _numbered(text, _hub(text))
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    if path.is_dir():
        return _numbered(path, _dataset_dir(path))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl(path)
    if suffix == ".json":
        return _json(path)
    if suffix in (".csv", ".parquet"):
        return _numbered(path, _datasets_file(path, suffix[1:]))
    raise DataError(
        f"{path}: cannot read {suffix or 'a file without a suffix'} as {what} (accepted: {ACCEPTED_FORMATS})"
    )


def _numbered(name: Any, rows: list) -> Labelled:
    return [(f"{name}: row {i}", r) for i, r in enumerate(rows, 1)]


def _read_text(path: Path) -> str:
    try:  # (-sig: a byte-order mark, as Windows editors write at the start, is dropped)
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        hint = " (a Parquet file must be named .parquet)" if path.read_bytes()[:4] == b"PAR1" else ""
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8{hint}") from None


# what json.loads raises: JSONDecodeError; ValueError for an integer of over 4300 digits; RecursionError for nesting
# deeper than Python's recursion limit
JSON_ERRORS = (ValueError, RecursionError)


def _json_problem(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno} column {e.colno}"
    return "nested too deeply" if isinstance(e, RecursionError) else first_line(e)


def _jsonl(path: Path) -> Labelled:
    rows = []
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):  # (not splitlines: U+2028 may sit in a string)
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{lineno}", json.loads(line)))
        except JSON_ERRORS as e:
            raise DataError(
                f"{path}:{lineno}: not valid JSON ({_json_problem(e)}); write one JSON object per line"
            ) from None
    return rows


def _json(path: Path) -> Labelled:
    try:
        data = json.loads(_read_text(path))
    except JSON_ERRORS as e:
        raise DataError(
            f"{path}: not valid JSON ({_json_problem(e)}); for one object per line name it .jsonl"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a JSON list of rows (or {{"data": [...]}}), got {type(data).__name__}')
    return _numbered(path, data)


def _datasets():
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency of aha
        raise DataError(
            "reading CSV, Parquet and datasets directories needs the datasets package (pip install datasets)"
        ) from None
    datasets.disable_progress_bars()
    return datasets


def _datasets_file(path: Path, kind: str) -> list[dict]:
    datasets = _datasets()
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:  # pyarrow's ArrowInvalid on a file that is not what its name says
        raise DataError(
            f"{path}: not a readable {kind.upper() if kind == 'csv' else 'Parquet'} file ({first_line(e)})"
        ) from None
    return _drop_nulls(ds.to_list())


def _dataset_dir(path: Path) -> list[dict]:
    datasets = _datasets()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # FileNotFoundError for a directory that save_to_disk did not write
        raise DataError(
            f"{path}: a directory, but not one written by datasets' save_to_disk ({first_line(e)}); "
            f"accepted: {ACCEPTED_FORMATS}"
        ) from None
    return _drop_nulls(_one_split(ds, str(path)).to_list())


def _hub(spec: str) -> list[dict]:
    """A hub dataset; where the hub cannot be reached (a probe of at most ~1.5 s, or HF_HUB_OFFLINE=1), the copy in
    the local cache or one line at once — not the hub client's minute of retries."""
    from aha.models import hub_offline, hub_reachable  # (transformers: loaded only for hf: data)

    datasets = _datasets()
    name, _, split = spec[3:].partition(":")
    online = hub_reachable()
    try:
        with contextlib.nullcontext() if online else hub_offline():
            ds = datasets.load_dataset(name, split=split or None)
    except Exception as e:
        if online:
            raise DataError(
                f"{spec}: cannot load this hub dataset ({first_line(e)}); without a network, save it with "
                "save_to_disk or as .jsonl/.parquet on a machine that has one"
            ) from None
        raise DataError(
            f"{spec}: the Hugging Face hub cannot be reached (no network, or HF_HUB_OFFLINE is set) and "
            "the local cache has no copy of it; save it with save_to_disk or as .jsonl/.parquet on a "
            "machine with a network"
        ) from None
    return _drop_nulls(_one_split(ds, spec).to_list())


def _one_split(ds: Any, name: str) -> Any:
    """A DatasetDict's ``train`` split, or its only split."""
    if not isinstance(ds, dict):  # a Dataset (a DatasetDict is a dict of them)
        return ds
    if "train" in ds:
        return ds["train"]
    if len(ds) == 1:
        return next(iter(ds.values()))
    raise DataError(
        f"{name}: a DatasetDict with splits {', '.join(ds)} and no 'train': name the split "
        "(hf:OWNER/NAME:SPLIT) or save that split by itself"
    )


def _drop_nulls(rows: list[dict]) -> list[dict]:
    """A columnar file has every column in every row: a null means 'not in this row' (pairs beside rankings)."""
    return [{k: v for k, v in r.items() if v is not None} for r in rows]
