"""Preference data: K-way rankings (with ties) and TRL-style pairs, one reader for both.

A ranking row::

    {"prompt": "...", "completions": ["a", "b", "c", "d"], "ranking": [[0, 2], 1, 3]}

``ranking`` lists completion indices best-first; a nested list is a tie (here 0 and 2 share first place).
Every index 0..K-1 appears exactly once, K ≥ 2. A pair row (TRL's format) is ``{"prompt", "chosen",
"rejected"}``, read as the ranking ``[0, 1]`` of ``[chosen, rejected]``; its texts may be plain strings or
conversational message lists. Extra columns (``labeler``, ``task_id`` …) are kept.

:func:`read_preferences` reads such rows from JSONL, JSON, Parquet or a ``datasets`` directory (``save_to_disk``);
a malformed row is one :class:`~aha.tasks.DataError` line naming the file, the row and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PreferenceRow:
    prompt: Any  # text or a list of chat messages
    completions: list  # K ≥ 2 texts (or message lists)
    ranking: list[list[int]]  # tiers best-first, each a sorted list of completion indices
    extra: dict = field(default_factory=dict)

    def pairs(self) -> list[tuple[int, int]]:
        """Every ordered ``(better, worse)`` pair the ranking implies (ties give none).

        >>> PreferenceRow("p", ["a", "b", "c"], [[0, 2], [1]]).pairs()
        [(0, 1), (2, 1)]
        """
        out = []
        for i, tier in enumerate(self.ranking):
            for worse_tier in self.ranking[i + 1:]:
                out += [(a, b) for a in tier for b in worse_tier]
        return out


def normalize_ranking(ranking: Any, k: int) -> list[list[int]]:
    """A ranking of ``k`` items as tiers best-first, or ValueError saying what is wrong.

    Accepts ``[2, 0, 1]`` and ties as nested lists ``[[0, 2], 1]``; every index 0..k-1 exactly once.

    >>> normalize_ranking([[0, 2], 1, 3], 4)
    [[0, 2], [1], [3]]
    """
    if k < 2:
        raise ValueError(f"a ranking needs at least 2 completions, got {k} (add completions or drop the row)")
    if not isinstance(ranking, (list, tuple)) or not ranking:
        raise ValueError(f"ranking must be a non-empty list of indices best-first (ties as nested lists), got {ranking!r}")
    tiers, seen = [], []
    for entry in ranking:
        tier = list(entry) if isinstance(entry, (list, tuple)) else [entry]
        if not tier:
            raise ValueError("ranking has an empty tie group []")
        for i in tier:
            if isinstance(i, bool) or not isinstance(i, int):
                raise ValueError(f"ranking entries must be integer indices, got {i!r}")
            if not 0 <= i < k:
                raise ValueError(f"ranking index {i} is out of range for {k} completions (0..{k - 1})")
        seen += tier
        tiers.append(sorted(tier))
    repeated = sorted({i for i in seen if seen.count(i) > 1})
    if repeated:
        raise ValueError(f"ranking repeats index {', '.join(map(str, repeated))}: each completion appears once")
    missing = sorted(set(range(k)) - set(seen))
    if missing:
        raise ValueError(f"ranking leaves out index {', '.join(map(str, missing))}: rank all {k} completions")
    if len(tiers) < 2:
        raise ValueError("ranking puts every completion in one tie: it states no preference")
    return tiers


def parse_preference(row: Any) -> PreferenceRow:
    """One row (a ranking or a TRL pair) as a :class:`PreferenceRow`, or ValueError naming the problem."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "prompt" not in row:
        raise ValueError("missing field 'prompt'")
    if "chosen" in row or "rejected" in row:
        for key in ("chosen", "rejected"):
            if row.get(key) in (None, ""):
                raise ValueError(f"a pair row needs 'chosen' and 'rejected'; '{key}' is missing or empty")
        extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
        return PreferenceRow(row["prompt"], [row["chosen"], row["rejected"]], [[0], [1]], extra)
    for key in ("completions", "ranking"):
        if key not in row:
            raise ValueError(f"missing field '{key}' (a ranking row has prompt, completions, ranking; "
                             "a pair row has prompt, chosen, rejected)")
    comps = row["completions"]
    if not isinstance(comps, (list, tuple)):
        raise ValueError(f"'completions' must be a list of texts, got {type(comps).__name__}")
    tiers = normalize_ranking(row["ranking"], len(comps))
    extra = {k: v for k, v in row.items() if k not in ("prompt", "completions", "ranking")}
    return PreferenceRow(row["prompt"], list(comps), tiers, extra)


def ranking_row(pref: PreferenceRow) -> dict:
    """The JSONL form of a row (ties as nested lists, single entries flat), extra columns kept."""
    ranking = [t[0] if len(t) == 1 else list(t) for t in pref.ranking]
    return {"prompt": pref.prompt, "completions": list(pref.completions), "ranking": ranking, **pref.extra}


ACCEPTED_FORMATS = ".jsonl (one JSON object per line), .json (a list of objects), .parquet, or a directory written " \
    "by datasets' save_to_disk"


def read_preferences(path: str | Path) -> list[PreferenceRow]:
    """Every row of a preference file as a :class:`PreferenceRow`.

    Reads ``.jsonl``/``.ndjson`` (row = line number), ``.json`` (a list of objects, or ``{"data": [...]}``),
    ``.parquet`` and a directory written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict``: its ``train``
    split, or its only split); rows are numbered from 1. In Parquet and ``datasets``, where a column holds one
    type, write ties as a ranking of lists only: ``[[0, 2], [1], [3]]``. A missing file, an unknown format or a
    malformed row raise :class:`~aha.tasks.DataError` with one line, e.g.
    ``prefs.jsonl:3: ranking index 4 is out of range for 4 completions (0..3)``.
    """
    from aha.tasks import DataError

    path = Path(path)
    if not path.exists():
        raise DataError(f"preference data not found: {path}")
    if path.is_dir():
        rows, where = _read_dataset_dir(path), "row"
    elif path.suffix in (".jsonl", ".ndjson"):
        rows, where = _read_jsonl_rows(path), "line"
    elif path.suffix == ".json":
        rows, where = _read_json_rows(path), "row"
    elif path.suffix == ".parquet":
        rows, where = _read_parquet(path), "row"
    else:
        raise DataError(f"{path}: cannot read {path.suffix or 'a file without a suffix'} as preference data "
                        f"(accepted: {ACCEPTED_FORMATS})")
    out = []
    for number, row in rows:
        try:
            pref = parse_preference(row)
            _check_texts(pref)
        except ValueError as e:
            at = f"{path}:{number}" if where == "line" else f"{path}: row {number}"
            raise DataError(f"{at}: {e}") from None
        out.append(pref)
    if not out:
        raise DataError(f"{path}: no preference rows")
    return out


def _check_texts(pref: PreferenceRow) -> None:
    if not isinstance(pref.prompt, (str, list)):
        raise ValueError(f"'prompt' must be text or a list of chat messages, got {type(pref.prompt).__name__}")
    for i, c in enumerate(pref.completions):
        if not isinstance(c, (str, list)):
            raise ValueError(f"completion {i} must be text or a list of chat messages, got {type(c).__name__}")


def _read_jsonl_rows(path: Path) -> list[tuple[int, Any]]:
    from aha.tasks import DataError

    text = _read_text(path)
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):  # (not splitlines: U+2028 may sit inside a JSON string)
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); write one JSON object per line") from None
    return rows


def _read_json_rows(path: Path) -> list[tuple[int, Any]]:
    from aha.tasks import DataError

    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); for one object per line name it "
                        ".jsonl") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows (or {{\"data\": [...]}}), got {type(data).__name__}")
    return list(enumerate(data, 1))


def _read_text(path: Path) -> str:
    from aha.tasks import DataError

    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None


def _read_parquet(path: Path) -> list[tuple[int, Any]]:
    from aha.tasks import DataError

    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install datasets)") from None
    except Exception as e:  # pyarrow's ArrowInvalid on a file that is not Parquet
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
    return list(enumerate(_drop_nulls(table.to_pylist()), 1))


def _read_dataset_dir(path: Path) -> list[tuple[int, Any]]:
    from aha.tasks import DataError

    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: reading a datasets directory needs the datasets package (pip install datasets)") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # FileNotFoundError for a directory that save_to_disk did not write
        raise DataError(f"{path}: a directory, but not one written by datasets' save_to_disk ({_first_line(e)}); "
                        f"accepted: {ACCEPTED_FORMATS}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DataError(f"{path}: a DatasetDict with splits {', '.join(ds)} and no 'train': save the split to "
                            "train on by itself")
    return list(enumerate(_drop_nulls(ds.to_list()), 1))


def _drop_nulls(rows: list[dict]) -> list[dict]:
    """A columnar file has every column in every row: a null means 'not in this row' (pairs beside rankings)."""
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
