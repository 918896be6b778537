"""Preference data: K-way rankings (with ties) and TRL-style pairs, one reader for both.

A ranking row::

    {"prompt": "...", "completions": ["a", "b", "c", "d"], "ranking": [[0, 2], 1, 3]}

``ranking`` lists completion indices best-first; a nested list is a tie (here 0 and 2 share first place).
Every index 0..K-1 appears exactly once, K ≥ 2. A pair row (TRL's format) is ``{"prompt", "chosen",
"rejected"}``, read as the ranking ``[0, 1]`` of ``[chosen, rejected]``; its texts may be plain strings or
conversational message lists. Extra columns (``labeler``, ``task_id`` …) are kept.

:func:`read_preferences` reads such rows from every format :mod:`aha.data.load` reads;
a malformed row is one :class:`~aha.tasks.DataError` line naming the file, the row and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aha.data.load import ACCEPTED_FORMATS, DataError, labelled_rows, text_problem  # noqa: F401 (ACCEPTED_FORMATS: re-exported)


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
            for worse_tier in self.ranking[i + 1 :]:
                out += [(a, b) for a in tier for b in worse_tier]
        return out


def normalize_ranking(ranking: Any, k: int) -> list[list[int]]:
    """A ranking of ``k`` items as tiers best-first, or ValueError saying what is wrong.

    Accepts ``[2, 0, 1]`` and ties as nested lists ``[[0, 2], 1]``; every index 0..k-1 exactly once.
    Linear in the ranking's length (one pass with a set), so a hostile 30,000-entry ranking costs
    milliseconds, not seconds.

    >>> normalize_ranking([[0, 2], 1, 3], 4)
    [[0, 2], [1], [3]]
    """
    if k < 2:
        raise ValueError(f"a ranking needs at least 2 completions, got {k} (add completions or drop the row)")
    if not isinstance(ranking, (list, tuple)) or not ranking:
        raise ValueError(
            f"ranking must be a non-empty list of indices best-first (ties as nested lists), got {_short(ranking)}"
        )
    tiers, seen, repeated = [], set(), set()
    for entry in ranking:
        tier = list(entry) if isinstance(entry, (list, tuple)) else [entry]
        if not tier:
            raise ValueError("ranking has an empty tie group []")
        for i in tier:
            if isinstance(i, bool) or not isinstance(i, int):
                raise ValueError(f"ranking entries must be integer indices, got {_short(i)}")
            if not 0 <= i < k:
                raise ValueError(f"ranking index {_short(i)} is out of range for {k} completions (0..{k - 1})")
            if i in seen:
                repeated.add(i)
            seen.add(i)
        tiers.append(sorted(tier))
    if repeated:
        raise ValueError(f"ranking repeats index {', '.join(map(str, sorted(repeated)))}: each completion appears once")
    if len(seen) < k:
        missing = [i for i in range(k) if i not in seen]
        raise ValueError(f"ranking leaves out index {', '.join(map(str, missing))}: rank all {k} completions")
    if len(tiers) < 2:
        raise ValueError("ranking puts every completion in one tie: it states no preference")
    return tiers


def _short(value: Any, n: int = 60) -> str:
    """``repr(value)`` cut to ``n`` characters: an error message stays one short line whatever was sent."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {len(str(abs(value))) if value.bit_length() < 10_000 else 'thousands of'} digits"
    text = repr(value) if not isinstance(value, (list, dict)) or len(value) < 100 else f"a {type(value).__name__}"
    return text if len(text) <= n else text[:n] + "…"


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
            raise ValueError(
                f"missing field '{key}' (a ranking row has prompt, completions, ranking; "
                "a pair row has prompt, chosen, rejected)"
            )
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


def read_preferences(path: Any) -> list[PreferenceRow]:
    """Every row of a preference file (or an in-memory dataset) as a :class:`PreferenceRow`.

    Reads what :func:`aha.data.load.load_rows` reads: ``.jsonl``/``.ndjson`` (row = line number), ``.json``, ``.csv``,
    ``.parquet``, a ``save_to_disk`` directory, ``hf:OWNER/NAME``, a ``datasets.Dataset`` or a list of dicts. In Parquet and ``datasets``, where a column holds one
    type, write ties as a ranking of lists only: ``[[0, 2], [1], [3]]``. A missing file, an unknown format or a
    malformed row raise :class:`~aha.tasks.DataError` with one line, e.g.
    ``prefs.jsonl:3: ranking index 4 is out of range for 4 completions (0..3)``.
    """
    out = []
    for where, row in labelled_rows(path, "preference data"):
        try:
            pref = parse_preference(row)
            _check_texts(pref)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        out.append(pref)
    return out


def _check_texts(pref: PreferenceRow) -> None:
    for what, text in (("'prompt'", pref.prompt), *((f"completion {i}", c) for i, c in enumerate(pref.completions))):
        if problem := text_problem(text):
            raise ValueError(f"{what} {problem}")
