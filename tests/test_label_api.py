"""The ranking app's HTTP API: its contract (next, rank, me, 204 when nothing is left) and hostile requests — another
labeler's task, bad rankings and bodies, forged tokens, scripts in completions, a cookie login without CSRF."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from label_env import Env, assert_one_line_error, task_rows

from aha.label.app import CSP

SCRIPT = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path, task_rows(4))


# ---------------------------------------------------------------------- the happy path and its contract
def test_next_rank_me_and_204_when_nothing_is_left(tmp_path):
    env = Env(tmp_path, task_rows(2), labelers=("alice",))
    first = env.next("alice").json()
    assert set(first) == {"task_id", "prompt", "completions"} and len(first["completions"]) == 3
    assert env.next("alice").json()["task_id"] == first["task_id"]  # a reload shows the same open task
    assert env.rank("alice", first["task_id"], [2, [0, 1]]).status_code == 201
    second = env.next("alice").json()
    assert second["task_id"] != first["task_id"]
    assert env.rank("alice", second["task_id"], [0, 1, 2]).status_code == 201
    resp = env.next("alice")
    assert resp.status_code == 204 and resp.content == b""
    me = env.client.get("/api/me", headers=env.auth("alice")).json()
    assert (me["name"], me["ranked"], me["skipped"], me["available"]) == ("alice", 2, 0, 0)
    assert_one_line_error(env.rank("alice", first["task_id"], [0, 1, 2]), 409, "already answered")


# ---------------------------------------------------------------------- hostile requests
def test_another_labelers_task_id_is_refused(env):
    alice_task = env.next("alice").json()["task_id"]
    msg = assert_one_line_error(env.rank("bob", alice_task, [0, 1, 2]), 403, "not assigned to you")
    # a task id that does not exist reads the same: ids reveal nothing
    assert assert_one_line_error(env.rank("bob", 999999, [0, 1, 2]), 403) == msg.replace(str(alice_task), "999999")
    assert env.store.stats()["progress"]["answered"] == 0


@pytest.mark.parametrize(
    "ranking, pattern",
    [
        ([0, 0, 1], "repeats index 0"),
        ([[0, 1], 1, 2], "repeats index 1"),
        ([0, 1, 7], "out of range"),
        ([0, "1", 2], "integer indices"),
        ([[0, 1, 2]], "one tie"),
        ("0,1,2", "non-empty list"),
        ([0, 1, True], "integer indices"),
    ],
)
def test_non_permutation_is_422(env, ranking, pattern):
    task = env.next("alice").json()["task_id"]
    assert_one_line_error(env.rank("alice", task, ranking), 422, pattern)
    assert env.rank("alice", task, [[0, 1], 2]).status_code == 201  # still open after the refusal


@pytest.mark.parametrize("ranking, pattern", [([0, 1], "leaves out index 2"), ([0, 1, 2, 3], "out of range")])
def test_ranking_of_the_wrong_length_is_422(env, ranking, pattern):
    task = env.next("alice").json()["task_id"]
    assert_one_line_error(env.rank("alice", task, ranking), 422, pattern)


def test_oversized_body_is_413(env):
    task = env.next("alice").json()["task_id"]
    big = json.dumps({"task_id": task, "ranking": [0, 1, 2], "note": "x" * 70_000})
    headers = {**env.auth("alice"), "content-type": "application/json"}
    assert_one_line_error(env.client.post("/api/rankings", content=big, headers=headers), 413, "64 KiB")
    # a chunked body has no Content-Length to check: it is counted as it arrives
    chunks = (big[i : i + 8192].encode() for i in range(0, len(big), 8192))
    assert_one_line_error(env.client.post("/api/rankings", content=chunks, headers=headers), 413, "64 KiB")
    assert env.store.stats()["progress"]["answered"] == 0


@pytest.mark.parametrize(
    "headers, pattern",
    [
        ({}, "not logged in"),
        ({"Authorization": "Bearer forged-token-123"}, "unknown token"),
        ({"Authorization": "Basic YWxpY2U6eA=="}, "Bearer TOKEN"),
        ({"Authorization": "Bearer "}, "Bearer TOKEN"),
        ({"Cookie": "aha_session=forged; aha_csrf=a", "X-CSRF-Token": "a"}, "session has ended.*log in again"),
    ],
)
def test_missing_or_forged_token_is_401(env, headers, pattern):
    for method, path in [
        ("GET", "/api/next"),
        ("GET", "/api/me"),
        ("POST", "/api/rankings"),
        ("GET", "/api/admin/stats"),
        ("GET", "/api/admin/export"),
    ]:
        kw = {"json": {"task_id": 1, "ranking": [0, 1, 2]}} if method == "POST" else {}
        env.client.cookies.clear()
        resp = env.client.request(method, path, headers=headers, **kw)
        assert_one_line_error(resp, 401, pattern)
        assert resp.headers["www-authenticate"] == "Bearer"


def test_admin_routes_refuse_a_labeler_token(env):
    for path in ("/api/admin/stats", "/api/admin/export"):
        assert_one_line_error(env.client.get(path, headers=env.auth("alice")), 403, "admin only")
        assert env.client.get(path, headers=env.auth("admin")).status_code == 200


def test_script_in_a_completion_is_stored_and_returned_as_text(tmp_path):
    env = Env(tmp_path, [{"prompt": f"say {SCRIPT}", "completions": [SCRIPT, "plain & <b>bold</b>"]}])
    resp = env.next("alice")
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["completions"] == [SCRIPT, "plain & <b>bold</b>"]  # byte for byte, not escaped twice
    assert env.rank("alice", resp.json()["task_id"], [1, 0]).status_code == 201
    row = json.loads(env.client.get("/api/admin/export", headers=env.auth("admin")).text.splitlines()[0])
    assert row["completions"][0] == SCRIPT and row["prompt"] == f"say {SCRIPT}"
    # the pages: a CSP that forbids inline script, and no HTML sink anywhere in their code
    page = env.client.get("/")
    assert page.headers["content-security-policy"] == CSP and "script-src 'self'" in CSP
    assert "'unsafe-inline'" not in CSP and page.headers["x-content-type-options"] == "nosniff"
    static = Path(__file__).parents[1] / "src" / "aha" / "label" / "static"
    for js in static.glob("*.js"):
        code = js.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in code, f"{js.name} uses {sink}"
    for html in static.glob("*.html"):
        assert not re.search(r"<script(?![^>]*\bsrc=)", html.read_text()), f"{html.name} has an inline script"
        text = html.read_text()
        assert " style=" not in text and not re.search(r"\son[a-z]+=", text), f"{html.name} has inline code"


def test_bad_bodies_are_one_line_4xx(env):
    task = env.next("alice").json()["task_id"]
    h = {**env.auth("alice"), "content-type": "application/json"}
    assert_one_line_error(env.client.post("/api/rankings", content=b"{not json", headers=h), 400, "not valid JSON")
    assert_one_line_error(
        env.client.post("/api/rankings", json={"ranking": [0, 1, 2]}, headers=h), 422, "missing field 'task_id'"
    )
    assert_one_line_error(env.client.post("/api/rankings", json={"task_id": "one"}, headers=h), 422, "task_id")
    assert_one_line_error(
        env.client.post("/api/rankings", json={"task_id": task, "rank": [0]}, headers=h), 422, "unknown field 'rank'"
    )
    assert_one_line_error(env.client.post("/api/rankings", json=[1, 2], headers=h), 422)
    assert_one_line_error(env.client.post("/api/rankings", json={"task_id": task}, headers=h), 422, "missing 'ranking'")
    assert_one_line_error(env.rank("alice", task, [0, 1, 2], skip=True), 422, "skip carries no ranking")
    assert_one_line_error(env.client.post("/api/rankings", json={"task_id": 2**70}, headers=h), 422)
    assert_one_line_error(env.client.get("/api/nope", headers=h), 404, "no such page")
    assert_one_line_error(env.client.delete("/api/rankings", headers=h), 405, "not allowed")
    assert_one_line_error(env.client.get("/static/../store.py"), 404)


def test_cookie_login_needs_the_csrf_header(env):
    c = env.client
    assert_one_line_error(c.post("/api/login", json={"token": "forged"}), 401, "unknown token")
    resp = c.post("/api/login", json={"token": env.tokens["alice"]})
    assert resp.status_code == 200 and resp.json()["name"] == "alice"
    session = [h for h in resp.headers.get_list("set-cookie") if h.startswith("aha_session=")][0]
    assert "HttpOnly" in session and "SameSite=strict" in session
    csrf = resp.json()["csrf"]
    assert c.get("/api/me").json()["name"] == "alice"  # a read needs only the cookie
    assert_one_line_error(c.get("/api/next"), 403, "CSRF")  # /api/next assigns: it is a write
    assert_one_line_error(c.get("/api/next", headers={"X-CSRF-Token": "guess"}), 403, "CSRF")
    task = c.get("/api/next", headers={"X-CSRF-Token": csrf}).json()["task_id"]
    assert_one_line_error(c.post("/api/rankings", json={"task_id": task, "ranking": [0, 1, 2]}), 403, "CSRF")
    ok = c.post("/api/rankings", json={"task_id": task, "ranking": [0, 1, 2]}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201
