"""Fuzzing the ranking app (hypothesis, as tests/test_fuzz.py does for configs): whatever JSON — or bytes — a client
sends to the ranking API, the answer is a 201 or a one-line 4xx, never a 500 or a traceback, and a refused request
stores nothing; whatever rankings a preference file holds, the reader gives rows or one line."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
from pathlib import Path

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from label_env import Env, task_rows

from aha.data.preferences import normalize_ranking, read_preferences
from aha.errors import AhaError
from aha.label.app import create_app

FUZZ = settings(
    max_examples=int(os.environ.get("AHA_FUZZ_EXAMPLES", 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TASK = "<the open task>"  # replaced by the labeler's open task id in each example

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["\ud800", "0", "1", "", "\x00", "1e400"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
indices = st.integers(-2, 5) | st.sampled_from([0, 1, 2, 3, True, False, 2**63, -(2**63), 1.0, "1"])
rankings = (
    st.lists(indices | st.lists(indices, max_size=4), max_size=8)
    | json_values
    | st.sampled_from([[0] * 5000, list(range(3000)), [[0, 1, 2]], [[[0]], 1, 2], [2, 1, 0], [[0, 2], 1]])
)
bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "task_id": st.just(TASK) | st.integers(-5, 2**64) | json_values,
            "ranking": rankings,
            "skip": st.booleans() | json_values,
            "flag": st.booleans() | json_values,
            "note": st.text(max_size=30) | st.sampled_from(["x" * 1001, "\ud800", "<script>x</script>"]) | json_values,
            "extra": json_values,
        },
    )
    | json_values
)
raw_bodies = st.binary(max_size=120) | st.sampled_from(
    [
        b"[" * 20000,
        b'{"task_id": ' + b"9" * 5000 + b"}",
        b"\xff\xfe",
        b'{"task_id": 1, "ranking": [0, 1, 2]',
        b"",
        b"null",
    ]
)


def snapshot(db: Path) -> tuple:
    with sqlite3.connect(db) as c:
        return (
            c.execute("SELECT * FROM rankings ORDER BY id").fetchall(),
            c.execute("SELECT * FROM assignments ORDER BY task_id, labeler_id").fetchall(),
            c.execute("SELECT id, active FROM tasks ORDER BY id").fetchall(),
        )


def one_line_or_created(resp) -> dict:
    assert resp.status_code < 500, resp.text
    assert resp.headers["content-type"].startswith("application/json") and "Traceback" not in resp.text
    data = resp.json()
    if resp.status_code >= 400:
        assert set(data) == {"error"} and data["error"].strip() and "\n" not in data["error"], data
        assert len(data["error"]) < 400
    return data


class Lab:
    """One database for all the examples of a test: alice always holds an open task (per_task 1, many tasks)."""

    def __init__(self, logins_per_minute: int = 10):
        logging.getLogger("aha.label").disabled = True  # a 500 would fail the test; its traceback is noise here
        self.folder = tempfile.TemporaryDirectory()
        self.env = Env(Path(self.folder.name), task_rows(1500, k=3), labelers=("alice",))
        self.env.client = TestClient(create_app(self.env.db, store=self.env.store, logins_per_minute=logins_per_minute))

    def open_task(self) -> int:
        resp = self.env.next("alice")
        assert resp.status_code == 200, "the fuzz ran out of tasks: add more"
        return resp.json()["task_id"]


def post(lab: Lab, content: bytes):
    return lab.env.client.post(
        "/api/rankings", content=content, headers={**lab.env.auth("alice"), "content-type": "application/json"}
    )


def check_stored(lab: Lab, before: tuple, resp, task: int, body) -> None:
    after = snapshot(lab.env.db)
    data = one_line_or_created(resp)
    if resp.status_code != 201:
        assert after == before, "a refused request changed the database"
        return
    assert len(after[0]) == len(before[0]) + 1 and after[0][:-1] == before[0]  # one row added, nothing else touched
    row = after[0][-1]
    assert row[1] == task == data["task_id"]
    if isinstance(body, dict) and body.get("ranking") is not None:
        assert json.loads(row[3]) == normalize_ranking(body["ranking"], 3) == data["ranking"]


@FUZZ
@given(body=bodies)
def test_ranking_api_json_bodies_give_201_or_one_line_and_refusals_store_nothing(body):
    lab = LAB.get("json") or LAB.setdefault("json", Lab())
    task = lab.open_task()
    if isinstance(body, dict) and body.get("task_id") == TASK:
        body = {**body, "task_id": task}
    before = snapshot(lab.env.db)
    resp = post(lab, json.dumps(body).encode("utf-8", "surrogatepass"))
    check_stored(lab, before, resp, task, body)


@FUZZ
@given(content=raw_bodies)
def test_ranking_api_raw_bytes_give_one_line(content):
    lab = LAB.get("raw") or LAB.setdefault("raw", Lab())
    task = lab.open_task()
    before = snapshot(lab.env.db)
    check_stored(lab, before, post(lab, content), task, None)


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {}, optional={"token": json_values | st.text(max_size=40), "next": json_values, "x": json_values}
    )
    | json_values,
    authorization=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
def test_login_and_auth_headers_give_one_line(body, authorization):
    lab = LAB.get("login") or LAB.setdefault("login", Lab(logins_per_minute=10**6))  # the checks, not the limit
    before = snapshot(lab.env.db)
    resp = lab.env.client.post(
        "/api/login",
        content=json.dumps(body).encode("utf-8", "surrogatepass"),
        headers={"content-type": "application/json"},
    )
    assert resp.status_code in (400, 401, 422), resp.text
    one_line_or_created(resp)
    resp = lab.env.client.get("/api/me", headers={"Authorization": authorization} if authorization else {})
    assert resp.status_code == 401 or authorization == f"Bearer {lab.env.tokens['alice']}"
    one_line_or_created(resp)
    assert snapshot(lab.env.db) == before


LAB: dict[str, Lab] = {}


# ----------------------------------------------------------------------------- the preference / ranking reader

hostile_rankings = rankings | st.sampled_from(
    [[[0, 1], [2]], [0, [1, [2]]], [float("nan"), 1], [2**100, 0], [[]], [], "[0, 1]", {"0": 1}]
)
pref_rows = st.fixed_dictionaries(
    {
        "prompt": st.text(max_size=10) | json_values,
        "completions": st.lists(st.text(max_size=6), max_size=5) | json_values,
        "ranking": hostile_rankings,
    },
    optional={"labeler": json_values, "task_id": json_values},
)


@FUZZ
@given(rows=st.lists(pref_rows | json_values, max_size=4), where=st.sampled_from(["memory", "jsonl"]))
def test_preference_reader_gives_rankings_or_one_line(rows, where):
    with tempfile.TemporaryDirectory() as folder:
        source = rows
        if where == "jsonl":
            source = Path(folder) / "prefs.jsonl"
            source.write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode("utf-8", "surrogatepass"))
        try:
            prefs = read_preferences(source)
        except AhaError as e:
            text = str(e)
            assert text.strip() and "\n" not in text.strip() and len(text) < 1000, text
            return
    for pref in prefs:
        flat = sorted(i for tier in pref.ranking for i in tier)
        assert flat == list(range(len(pref.completions))) and len(pref.ranking) >= 2
        assert all(type(i) is int for i in flat)
