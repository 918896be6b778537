"""Preference data: every format reads, every malformed row is one line naming the file, the row and the fix."""

from __future__ import annotations

import json

import pytest

from aha.data.preferences import read_preferences
from aha.tasks import DataError

ROWS = [
    {"prompt": "p", "completions": ["a", "b", "c"], "ranking": [[0, 2], [1]]},
    {"prompt": "q", "chosen": "x", "rejected": "y"},
]


def test_jsonl_json_parquet_and_datasets_dir(tmp_path):
    datasets = pytest.importorskip("datasets")
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "r.json").write_text(json.dumps(ROWS))
    ds = datasets.Dataset.from_list([{"prompt": "p", "completions": ["a", "b", "c"], "ranking": [[0, 2], [1]]}])
    ds.to_parquet(str(tmp_path / "r.parquet"))
    ds.save_to_disk(str(tmp_path / "ds"))
    for name in ("r.jsonl", "r.json"):
        rows = read_preferences(tmp_path / name)
        assert rows[0].ranking == [[0, 2], [1]] and rows[0].pairs() == [(0, 1), (2, 1)]
        assert rows[1].completions == ["x", "y"] and rows[1].ranking == [[0], [1]]
    for name in ("r.parquet", "ds"):
        assert read_preferences(tmp_path / name)[0].ranking == [[0, 2], [1]]


def test_trl_pairs_conversational(tmp_path):
    row = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
    (tmp_path / "c.jsonl").write_text(json.dumps(row) + "\n")
    pref = read_preferences(tmp_path / "c.jsonl")[0]
    assert pref.prompt[0]["content"] == "hi" and pref.completions[0][0]["content"] == "hello"


@pytest.mark.parametrize(
    "row, needle",
    [
        ({"prompt": "p", "completions": ["a", "b"], "ranking": [0, 5]}, "out of range"),
        ({"prompt": "p", "completions": ["a", "b"], "ranking": [0, 0]}, "repeats index 0"),
        ({"prompt": "p", "completions": ["a", "b"]}, "missing field 'ranking'"),
        ({"completions": ["a", "b"], "ranking": [0, 1]}, "missing field 'prompt'"),
        ({"prompt": "p", "completions": ["a"], "ranking": [0]}, "at least 2 completions"),
    ],
)
def test_malformed_row_is_one_line_naming_file_and_row(tmp_path, row, needle):
    good = json.dumps(ROWS[0])
    (tmp_path / "bad.jsonl").write_text(good + "\n" + good + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        read_preferences(tmp_path / "bad.jsonl")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'bad.jsonl'}:3:") and needle in msg


def test_unknown_format_names_the_formats(tmp_path):
    (tmp_path / "r.txt").write_text("prompt\n")
    with pytest.raises(DataError, match=r"accepted: \.jsonl.*\.json.*\.csv.*\.parquet.*save_to_disk"):
        read_preferences(tmp_path / "r.txt")
