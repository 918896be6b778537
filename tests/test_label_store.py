"""The ranking database: hostile rankings refused before the write lock, the export on its own connection, the
schema version and its migrations, a newer database refused, and an online backup taken while the server writes."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

from fastapi.testclient import TestClient
from label_env import Env, assert_one_line_error, task_rows
from typer.testing import CliRunner

from aha.cli import app as aha_cli
from aha.data.preferences import normalize_ranking
from aha.label.schema import SCHEMA_VERSION, V1
from aha.label.store import Store, hash_token


# ---------------------------------------------------------------------- 4. rankings checked before the write lock
def test_hostile_rankings_are_refused_without_waiting_for_the_write_lock(tmp_path):
    env = Env(tmp_path, task_rows(2, k=4), labelers=("alice",))
    task = env.next("alice").json()["task_id"]
    h = {**env.auth("alice"), "content-type": "application/json"}
    hostile = json.dumps({"task_id": task, "ranking": [0] * 32_000}, separators=(",", ":"))
    assert len(hostile) < 64 * 1024  # under the body limit: the entry cap has to catch it

    blocker = sqlite3.connect(env.db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock (busy_timeout would wait 30 s for it)
    try:
        t0 = time.perf_counter()
        assert_one_line_error(
            env.client.post("/api/rankings", content=hostile, headers=h),
            422,
            "more than 26 indices: a task has at most 26 completions",
        )
        assert_one_line_error(env.rank("alice", task, [0, 1, 1, 2]), 422, "repeats index 1")
        assert_one_line_error(env.rank("alice", task, [[0, 1], 2]), 422, "leaves out index 3")
        assert_one_line_error(env.rank("alice", 999, [0, 1, 2, 3]), 403, "not assigned to you")
        assert time.perf_counter() - t0 < 25  # answered without the lock, not after a 30 s busy wait
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert env.rank("alice", task, [3, [0, 1], 2]).status_code == 201


def test_normalize_ranking_checks_a_long_ranking_in_one_pass():
    n = 200_000  # the old check (list.count per index) took minutes here
    assert len(normalize_ranking(list(range(n))[::-1], n)) == n
    for bad, pattern in (([0] * n, "repeats index 0"), (list(range(n - 1)), f"leaves out index {n - 1}")):
        try:
            normalize_ranking(bad, n)
        except ValueError as e:
            assert pattern in str(e) and len(str(e)) < 200
        else:
            raise AssertionError("accepted a non-permutation")


def test_export_reads_on_its_own_connection_and_snapshot(tmp_path):
    env = Env(tmp_path, task_rows(4), labelers=("alice",))
    for ranking in ([0, 1, 2], [2, 1, 0]):
        assert env.rank("alice", env.next("alice").json()["task_id"], ranking).status_code == 201
    rows = env.store.export_rows()
    first = next(rows)
    env.store.close()  # this thread's connection goes away mid-export (a worker thread ends, say)
    assert env.rank("alice", env.next("alice").json()["task_id"], [1, 0, 2]).status_code == 201  # a write meanwhile
    rest = []
    reader = threading.Thread(target=lambda: rest.extend(rows))  # the stream resumes on another thread
    reader.start()
    reader.join()
    assert [first["ranking"], *(r["ranking"] for r in rest)] == [[0, 1, 2], [2, 1, 0]]  # one snapshot
    assert len(list(env.store.export_rows())) == 3


def test_26_completions_rank_through_the_api(tmp_path):
    env = Env(tmp_path, task_rows(1, k=26), labelers=("alice",))
    task = env.next("alice").json()
    assert len(task["completions"]) == 26
    ranking = [[0, 25], *range(1, 25)]
    assert env.rank("alice", task["task_id"], ranking).status_code == 201
    row = json.loads(env.client.get("/api/admin/export", headers=env.auth("admin")).text)
    assert row["ranking"] == ranking and len(row["completions"]) == 26


# ---------------------------------------------------------------------- 6. schema version, migrations, backup
def old_database(path) -> str:
    """A database as the aha before schema versions wrote it (user_version 0), with one ranking; alice's token."""
    c = sqlite3.connect(path)
    c.executescript(V1)
    c.execute("INSERT INTO meta VALUES ('per_task', '1')")
    c.execute("INSERT INTO tasks (key, prompt, completions) VALUES ('k1', '\"p\"', '[\"a\", \"b\"]')")
    c.execute("INSERT INTO tasks (key, prompt, completions) VALUES ('k2', '\"q\"', '[\"c\", \"d\"]')")
    c.execute("INSERT INTO labelers (name, token_hash, is_admin, created_at) VALUES ('admin', 'h', 1, 0)")
    c.execute(
        "INSERT INTO labelers (name, token_hash, is_admin, created_at) VALUES ('alice', ?, 0, 0)",
        (hash_token("alice-token"),),
    )
    c.execute("INSERT INTO assignments VALUES (1, 2, 'done', 0)")
    c.execute("UPDATE tasks SET active = 1 WHERE id = 1")
    c.execute(
        "INSERT INTO rankings (task_id, labeler_id, ranking, seconds, created_at) VALUES (1, 2, '[[1], [0]]', 3, 1)"
    )
    c.commit()
    assert c.execute("PRAGMA user_version").fetchone()[0] == 0
    c.close()
    return "alice-token"


def test_serve_migrates_an_old_database_keeping_every_row(tmp_path, monkeypatch):
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    db = tmp_path / "old.sqlite"
    token = old_database(db)
    result = CliRunner().invoke(aha_cli, ["label", "serve", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert f"upgraded {db} from schema v0 to v{SCHEMA_VERSION} (every row kept)" in result.output
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    client = TestClient(apps[0])
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/me", headers=auth).json()["ranked"] == 1
    assert client.post("/api/login", json={"token": token}).status_code == 200  # the new sessions table works
    assert client.get("/api/next", headers=auth).json()["task_id"] == 2
    assert [r["ranking"] for r in apps[0].state.store.export_rows()] == [[1, 0]]
    again = CliRunner().invoke(aha_cli, ["label", "serve", "--db", str(db)])
    assert again.exit_code == 0 and "upgraded" not in again.output  # once


def test_a_database_from_a_newer_aha_is_refused_in_one_line(tmp_path):
    db = tmp_path / "new.sqlite"
    Store(db).add_tasks(task_rows(1))
    with sqlite3.connect(db) as c:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for args in (["serve"], ["export", "--out", str(tmp_path / "x.jsonl")], ["add-labeler", "x"]):
        result = CliRunner().invoke(aha_cli, ["label", *args, "--db", str(db)])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        newer = f"written by a newer aha (schema v{SCHEMA_VERSION + 1}; this aha reads up to v{SCHEMA_VERSION})"
        assert newer in lines[0]
    with sqlite3.connect(db) as c:  # untouched
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_backup_while_the_server_is_writing(tmp_path):
    env = Env(tmp_path, task_rows(400, k=3), labelers=("alice",))
    acked, stop = [0], threading.Event()

    def labeler():  # the server keeps taking rankings over HTTP while the backups run
        client = TestClient(env.client.app)
        while not stop.is_set():
            resp = client.get("/api/next", headers=env.auth("alice"))
            if resp.status_code == 204:
                return
            r = client.post(
                "/api/rankings",
                json={"task_id": resp.json()["task_id"], "ranking": [2, 0, 1]},
                headers=env.auth("alice"),
            )
            assert r.status_code == 201
            acked[0] += 1

    writer = threading.Thread(target=labeler)
    writer.start()
    try:
        copies = []
        for n in range(3):
            deadline = time.monotonic() + 60  # a writer that failed or stalled ends the test, never hangs it
            while acked[0] < 10 * (n + 1):
                assert writer.is_alive() and time.monotonic() < deadline, f"the labeler stopped at {acked[0]} rankings"
                time.sleep(0.01)
            before = acked[0]
            out = tmp_path / f"backup-{n}.sqlite"
            result = CliRunner().invoke(aha_cli, ["label", "backup", "--db", str(env.db), "--out", str(out)])
            assert result.exit_code == 0, result.output
            assert writer.is_alive()  # the writes went on during the backup
            copies.append((out, before, acked[0], result.output))
    finally:
        stop.set()
        writer.join()
    for out, before, after, output in copies:
        c = sqlite3.connect(out)
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = c.execute("SELECT COUNT(*) FROM rankings").fetchone()[0]
        assert before <= n <= after + 1, (before, n, after)
        assert c.execute("SELECT ranking FROM rankings LIMIT 1").fetchone()[0] == "[[2], [0], [1]]"
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
        assert f"backed up {n} rankings, 400 tasks, 2 labelers to {out}" in output
        c.close()
        assert not out.with_name(out.name + ".partial").exists()
    bad = CliRunner().invoke(aha_cli, ["label", "backup", "--db", str(env.db), "--out", str(env.db)])
    assert bad.exit_code == 2 and "that is the database itself" in bad.output
