"""Handing out tasks: each to ``per_task`` labelers and never twice to one, fair under 16 racing threads, a skip
giving the slot to someone else, an abandoned assignment freed after its lease, a flag with or without a ranking."""

from __future__ import annotations

import json
import threading
import time

import pytest
from label_env import Env, task_rows

from aha.label.store import Store


def test_each_task_goes_to_per_task_labelers_never_twice(tmp_path):
    env = Env(tmp_path, task_rows(5), per_task=2)
    seen = {name: [] for name in env.tokens}
    for _ in range(10):  # interleaved, as people work
        for name in env.tokens:
            resp = env.next(name)
            if resp.status_code == 200:
                seen[name].append(resp.json()["task_id"])
                assert env.rank(name, resp.json()["task_id"], [0, [1, 2]]).status_code == 201
    per_task = {}
    for name, ids in seen.items():
        assert len(ids) == len(set(ids)), f"{name} got a task twice"
        for t in ids:
            per_task[t] = per_task.get(t, 0) + 1
    assert per_task == {t: 2 for t in per_task} and len(per_task) == 5  # every task exactly twice
    assert all(env.next(name).status_code == 204 for name in env.tokens)


def test_assignment_is_fair_under_concurrency(tmp_path):
    """16 threads, each its own connection, racing for 30 tasks × 3 slots: never over-assigned."""
    store = Store(tmp_path / "r.sqlite")
    store.set_per_task(3)
    store.add_tasks(task_rows(30))
    labelers = [store.user_for_token(store.add_labeler(f"l{i}"))["id"] for i in range(16)]
    got: dict[int, list[int]] = {lab: [] for lab in labelers}

    def work(lab: int):
        while (task := store.next_task(lab)) is not None:
            got[lab].append(task["task_id"])
            store.submit(lab, task["task_id"], [2, 1, 0])
        store.close()

    threads = [threading.Thread(target=work, args=(lab,)) for lab in labelers]
    [t.start() for t in threads]
    [t.join() for t in threads]
    counts = store._conn().execute("SELECT task_id, COUNT(*) FROM rankings GROUP BY task_id").fetchall()
    assert sorted(n for _, n in counts) == [3] * 30
    assert all(len(v) == len(set(v)) for v in got.values())
    assert sum(map(len, got.values())) == 90


def test_skip_gives_the_slot_to_someone_else_but_never_back(tmp_path):
    env = Env(tmp_path, task_rows(1), per_task=1, labelers=("alice", "bob"))
    task = env.next("alice").json()["task_id"]
    assert env.next("bob").status_code == 204  # the one slot is alice's
    assert env.rank("alice", task, skip=True).status_code == 201
    assert env.next("alice").status_code == 204  # never the same task twice, skipped or not
    assert env.next("bob").json()["task_id"] == task
    me = env.client.get("/api/me", headers=env.auth("alice")).json()
    assert (me["skipped"], me["ranked"]) == (1, 0)


def test_an_abandoned_assignment_frees_its_slot_after_the_lease(tmp_path):
    store = Store(tmp_path / "r.sqlite", lease_s=1.0)  # bob's first ask comes within the lease on a busy machine too
    store.add_tasks(task_rows(1))
    alice, bob = (store.user_for_token(store.add_labeler(n))["id"] for n in ("alice", "bob"))
    task = store.next_task(alice)["task_id"]
    assert store.next_task(bob) is None
    time.sleep(1.3)
    assert store.next_task(bob)["task_id"] == task
    with pytest.raises(Exception, match="not assigned to you"):
        store.submit(alice, task, [0, 1, 2])


def test_flag_with_or_without_a_ranking(tmp_path):
    env = Env(tmp_path, task_rows(2), labelers=("alice",))
    t1 = env.next("alice").json()["task_id"]
    assert env.rank("alice", t1, flag=True, note="asks for a weapon").status_code == 201
    t2 = env.next("alice").json()["task_id"]
    assert env.rank("alice", t2, [1, 0, 2], flag=True).status_code == 201
    stats = env.client.get("/api/admin/stats", headers=env.auth("admin")).json()
    assert [(f["task_id"], f["note"]) for f in stats["flagged"]] == [(t2, None), (t1, "asks for a weapon")]
    rows = [json.loads(x) for x in env.client.get("/api/admin/export", headers=env.auth("admin")).text.splitlines()]
    assert [(r["task_id"], r["flagged"]) for r in rows] == [(t2, True)]  # a flag without a ranking is not data
