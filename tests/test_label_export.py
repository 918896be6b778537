"""The export, through the API and ``aha label export``, read back by the reward model's reader (ties kept)."""

from __future__ import annotations

import json

from label_env import Env, task_rows
from typer.testing import CliRunner

from aha.cli import app as aha_cli
from aha.data.preferences import parse_preference


def test_export_round_trips_through_parse_preference(tmp_path):
    tasks = [
        {"prompt": [{"role": "user", "content": "chat prompt"}], "completions": ["a", "b", "c", "d"], "source": "chat"},
        *task_rows(1, k=4),
    ]
    env = Env(tmp_path, tasks, per_task=2, labelers=("alice", "bob"))
    sent = {}
    for name, ranking in (
        ("alice", [[0, 2], 1, 3]),
        ("bob", [3, 2, 1, 0]),
        ("alice", [1, [0, 3], 2]),
        ("bob", [0, 1, 2, 3]),
    ):
        task = env.next(name).json()["task_id"]
        assert env.rank(name, task, ranking).status_code == 201
        sent[(task, name)] = ranking
    api_rows = [json.loads(x) for x in env.client.get("/api/admin/export", headers=env.auth("admin")).text.splitlines()]
    out = tmp_path / "prefs.jsonl"
    result = CliRunner().invoke(aha_cli, ["label", "export", "--db", str(env.db), "--out", str(out)])
    assert result.exit_code == 0 and result.output.strip() == f"wrote 4 rankings to {out}"
    cli_rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "created_at"} for r in cli_rows] == [
        {k: v for k, v in r.items() if k != "created_at"} for r in api_rows
    ]
    assert len(cli_rows) == 4
    for row in cli_rows:
        pref = parse_preference(row)
        assert row["ranking"] == sent[(row["task_id"], row["labeler"])]  # ties kept, nested as sent
        assert pref.ranking == [sorted(t) if isinstance(t, list) else [t] for t in row["ranking"]]
        assert pref.extra["labeler"] in ("alice", "bob") and pref.extra["source"] in ("chat", "test")
        assert len(pref.completions) == 4
    assert parse_preference(cli_rows[0]).pairs() == [(0, 1), (2, 1), (0, 3), (2, 3), (1, 3)]
