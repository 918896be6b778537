"""The admin's statistics: Kendall's W computed by hand, and progress, per-labeler counts and agreement."""

from __future__ import annotations

import pytest
from label_env import Env, task_rows

from aha.label.store import kendalls_w


def test_kendalls_w_by_hand():
    # ranks: item0 1,1,2 = 4; item1 2,3,1 = 6; item2 3,2,3 = 8; mean 6; S = 8; W = 12·8 / (3²·(27−3)) = 4/9
    assert kendalls_w([[[0], [1], [2]], [[0], [2], [1]], [[1], [0], [2]]], 3) == pytest.approx(4 / 9)
    # a tie: [0,1] > 2 and 0 > 1 > 2 → R = (2.5, 3.5, 6), S = 6.5, T = 2³ − 2 = 6; W = 78 / (4·24 − 2·6) = 13/14
    assert kendalls_w([[[0, 1], [2]], [[0], [1], [2]]], 3) == pytest.approx(13 / 14)
    assert kendalls_w([[[0], [1]]], 2) is None


def test_admin_stats_progress_labelers_agreement(tmp_path):
    env = Env(tmp_path, task_rows(2), per_task=2, labelers=("alice", "bob"))
    for name, ranking in (("alice", [0, 1, 2]), ("bob", [0, 1, 2]), ("alice", [2, 1, 0]), ("bob", [0, 1, 2])):
        task = env.next(name).json()["task_id"]
        assert env.rank(name, task, ranking).status_code == 201
    s = env.client.get("/api/admin/stats", headers=env.auth("admin")).json()
    assert s["progress"] == {
        "tasks": 2,
        "per_task": 2,
        "target": 4,
        "answered": 4,
        "tasks_complete": 2,
        "skipped": 0,
        "open": 0,
    }
    assert [(lab["name"], lab["ranked"]) for lab in s["labelers"]] == [("alice", 2), ("bob", 2)]
    assert s["labelers"][0]["median_seconds"] is not None
    # task 1: identical (W = 1); task 2: reversed (W = 0)
    assert s["agreement"] == {"kendalls_w_mean": 0.5, "kendalls_w_median": 0.5, "tasks": 2}
