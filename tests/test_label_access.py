"""Who may use the ranking app, and for how long: revoking a labeler, sessions that expire, a new admin token,
the per-client rate limit (429 + Retry-After), where a login may land, Secure cookies over HTTPS (and only a
trusted proxy's word for it), and the security headers on every response, a crash's 500 included."""

from __future__ import annotations

import json
import re
import time

import pytest
from fastapi.testclient import TestClient
from label_env import Env, assert_one_line_error, task_rows
from typer.testing import CliRunner

from aha.cli import app as aha_cli
from aha.label.app import create_app
from aha.label.security import SECURITY_HEADERS, SlidingWindow, safe_next


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path, task_rows(4))


def cli(*args: str):
    return CliRunner().invoke(aha_cli, ["label", *args])


def login(client: TestClient, token: str, next_: str | None = None):
    return client.post("/api/login", json={"token": token, **({"next": next_} if next_ is not None else {})})


def exported(env: Env) -> list[dict]:
    return [json.loads(x) for x in env.client.get("/api/admin/export", headers=env.auth("admin")).text.splitlines()]


# ---------------------------------------------------------------------- 1. revoke, sessions, a new admin token
def test_revoke_stops_token_and_session_at_once_and_keeps_the_rankings(tmp_path):
    env = Env(tmp_path, task_rows(3), labelers=("alice", "bob"))
    task = env.next("alice").json()["task_id"]
    assert env.rank("alice", task, [2, 0, 1]).status_code == 201
    open_task = env.next("alice").json()["task_id"]  # alice holds a second task when she is revoked
    browser = TestClient(env.client.app)
    assert login(browser, env.tokens["alice"]).status_code == 200
    assert browser.get("/api/me").json()["name"] == "alice"

    result = cli("revoke", "alice", "--db", str(env.db))  # another process, the server still running
    assert result.exit_code == 0 and result.output.strip().startswith("revoked alice"), result.output
    assert_one_line_error(env.next("alice"), 401, "unknown token")
    assert_one_line_error(browser.get("/api/me"), 401, "session has ended")
    assert_one_line_error(login(TestClient(env.client.app), env.tokens["alice"]), 401, "unknown token")
    rows = exported(env)
    assert [(r["task_id"], r["labeler"], r["ranking"]) for r in rows] == [(task, "alice", [2, 0, 1])]
    stats = env.client.get("/api/admin/stats", headers=env.auth("admin")).json()
    assert {lab["name"]: lab["revoked"] for lab in stats["labelers"]} == {"alice": True, "bob": False}
    # her open task went back to the pool (per_task 1): bob gets it now, not in an hour when its lease ends
    assert env.next("bob").json()["task_id"] == open_task

    again = cli("revoke", "alice", "--db", str(env.db))
    assert again.exit_code == 0 and "already revoked" in again.output
    for args, pattern in (
        (["revoke", "admin"], "admin cannot be revoked"),
        (["revoke", "zed"], "no labeler named 'zed'"),
        (["new-token", "alice"], "revoked"),
    ):
        bad = cli(*args, "--db", str(env.db))
        assert bad.exit_code == 2 and re.search(pattern, bad.output) and len(bad.output.strip().splitlines()) == 1


def test_admin_page_revoke_api(env):
    body = {"name": "bob"}
    assert_one_line_error(env.client.post("/api/admin/revoke", json=body, headers=env.auth("alice")), 403, "admin only")
    assert_one_line_error(
        env.client.post("/api/admin/revoke", json={"name": "zed"}, headers=env.auth("admin")),
        404,
        "no labeler named 'zed'",
    )
    assert_one_line_error(env.client.post("/api/admin/revoke", json={"name": "admin"}, headers=env.auth("admin")), 409)
    assert env.next("bob").status_code == 200
    resp = env.client.post("/api/admin/revoke", json=body, headers=env.auth("admin"))
    assert resp.status_code == 200 and resp.json() == {"name": "bob", "revoked": True, "already": False}
    assert_one_line_error(env.next("bob"), 401, "unknown token")
    assert env.next("alice").status_code == 200  # nobody else is affected


def test_sessions_expire_and_end_at_logout_and_hold_no_token(env):
    env.store.session_s = 2.0  # long enough for the login and the first request on a loaded machine
    client = TestClient(env.client.app)
    resp = login(client, env.tokens["alice"])
    cookies = resp.headers.get_list("set-cookie")
    session = [c for c in cookies if c.startswith("aha_session=")][0]
    assert env.tokens["alice"] not in " ".join(cookies)  # the cookie holds a session, not the labeler's token
    assert "Max-Age=2;" in session and "HttpOnly" in session  # the browser forgets it when the server does
    assert client.get("/api/me").status_code == 200
    time.sleep(2.3)
    # the server ends it, whether or not the client forgot the cookie (here: sent back as if it had not)
    stale = TestClient(env.client.app, cookies={"aha_session": session.split(";")[0].split("=", 1)[1]})
    assert_one_line_error(stale.get("/api/me"), 401, "session has ended")

    env.store.session_s = 3600
    resp = login(client, env.tokens["alice"])
    value = client.cookies.get("aha_session")
    assert client.post("/api/logout", headers={"X-CSRF-Token": resp.json()["csrf"]}).status_code == 200
    replay = TestClient(env.client.app, cookies={"aha_session": value})
    assert_one_line_error(replay.get("/api/me"), 401, "session has ended")  # a stolen cookie dies with the logout


def test_cli_session_hours_sets_the_session_length(tmp_path, monkeypatch):
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps(task_rows(1)[0]) + "\n")
    result = cli("serve", "--db", str(tmp_path / "r.sqlite"), "--tasks", str(tasks), "--session-hours", "2")
    assert result.exit_code == 0, result.output
    assert apps[0].state.store.session_s == 7200


def test_new_token_replaces_the_admin_token_at_once(env):
    admin_browser = TestClient(env.client.app)
    assert login(admin_browser, env.admin_token).json()["admin"] is True
    result = cli("new-token", "--db", str(env.db))
    assert result.exit_code == 0
    new = result.output.strip()
    assert re.fullmatch(r"[\w-]{20,}", new) and new != env.admin_token
    assert_one_line_error(env.client.get("/api/admin/stats", headers=env.auth("admin")), 401, "unknown token")
    assert_one_line_error(admin_browser.get("/api/admin/stats"), 401, "session has ended")
    assert env.client.get("/api/admin/stats", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert env.next("alice").status_code == 200


# ---------------------------------------------------------------------- 2. the rate limit
def test_sliding_window_by_hand():
    now = [0.0]
    w = SlidingWindow(3, 60, clock=lambda: now[0])
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        assert w.retry_after("a") == 0
        w.add("a")
    assert w.retry_after("a") == 40  # the oldest of the 3 (t = 0) leaves the window at t = 60
    assert w.retry_after("b") == 0  # per client
    now[0] = 60.0
    assert w.retry_after("a") == 0  # slid: t = 0 is out
    w.add("a")
    assert w.retry_after("a") == 10  # now t = 10 is the oldest of 3
    small = SlidingWindow(1, 60, max_keys=2, clock=lambda: now[0])
    for key in ("x", "y", "z"):
        small.add(key)
    assert small.retry_after("x") == 0 and small.retry_after("z") == 60  # memory stays bounded


def test_logins_over_the_limit_get_429_with_retry_after(tmp_path):
    env = Env(tmp_path, task_rows(1))
    client = TestClient(create_app(env.db, store=env.store, logins_per_minute=4))
    assert [login(client, t).status_code for t in ("x", env.tokens["alice"], "y", env.tokens["bob"])] == [
        401,
        200,
        401,
        200,
    ]
    resp = login(client, env.tokens["alice"])
    assert_one_line_error(resp, 429, r"too many logins from your address: try again in \d+ s")
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    other = TestClient(client.app, client=("10.0.0.7", 5000))  # another address is not held up
    assert login(other, env.tokens["alice"]).status_code == 200


def test_failed_token_checks_over_the_limit_get_429(tmp_path):
    env = Env(tmp_path, task_rows(1))
    client = TestClient(create_app(env.db, store=env.store, logins_per_minute=2))  # 6 failed checks a minute
    good = {"Authorization": f"Bearer {env.tokens['alice']}"}
    for _ in range(200):  # a legitimate client is never limited
        assert client.get("/api/me", headers=good).status_code == 200
    for _ in range(6):
        assert_one_line_error(client.get("/api/me", headers={"Authorization": "Bearer guess"}), 401)
    resp = client.get("/api/me", headers={"Authorization": "Bearer guess2"})
    assert_one_line_error(resp, 429, "too many failed token checks")
    assert int(resp.headers["retry-after"]) >= 1
    forged = TestClient(client.app, cookies={"aha_session": "forged"})
    assert_one_line_error(forged.get("/api/me"), 429)  # a forged cookie counts from the same address
    assert TestClient(client.app, client=("10.0.0.8", 1)).get("/api/me", headers=good).status_code == 200


# ---------------------------------------------------------------------- 3. redirects, cookies, proxies, headers
@pytest.mark.parametrize(
    "target",
    [
        "//evil.com",
        "/\\evil.com",
        "\\\\evil.com",
        "https://evil.com",
        "http:evil.com",
        "/%2F%2Fevil.com",
        "/%5Cevil.com",
        "javascript:alert(1)",
        " /admin",
        "/\t/evil.com",
        "/admin\n",
        "//",
        "",
        "evil.com",
        "/api/admin/export",
        "/../admin/..",
        None,
        5,
        "/login",
        "/" + "a" * 300,
    ],
)
def test_login_lands_only_on_the_apps_own_pages(env, target):
    assert safe_next(target, admin=True) == "/admin" and safe_next(target, admin=False) == "/"
    resp = login(TestClient(env.client.app), env.tokens["alice"], target if isinstance(target, str) else None)
    assert resp.json()["next"] == "/"


def test_login_next_passes_the_apps_pages():
    assert safe_next("/admin", admin=True) == "/admin" and safe_next("/admin?tab=x#y", admin=True) == "/admin"
    assert safe_next("/", admin=True) == "/" and safe_next("/admin", admin=False) == "/"  # a labeler goes home


def session_cookie(resp) -> str:
    return [c for c in resp.headers.get_list("set-cookie") if c.startswith("aha_session=")][0]


def test_cookies_are_secure_over_https_and_only_a_trusted_proxy_says_so(tmp_path):
    env = Env(tmp_path, task_rows(1))
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    plain = env.client.post("/api/login", json={"token": env.tokens["alice"]})
    assert "Secure" not in session_cookie(plain) and "strict-transport-security" not in plain.headers
    direct = login(TestClient(env.client.app, base_url="https://testserver"), env.tokens["alice"])
    assert "Secure" in session_cookie(direct) and direct.headers["strict-transport-security"].startswith("max-age=")
    spoofed = env.client.post("/api/login", json={"token": env.tokens["alice"]}, headers=forwarded)
    assert "Secure" not in session_cookie(spoofed)  # from an untrusted client the header is ignored

    proxied = TestClient(
        create_app(env.db, store=env.store, trusted_proxies=("127.0.0.1",), logins_per_minute=2),
        client=("127.0.0.1", 40000),
    )
    resp = proxied.post("/api/login", json={"token": env.tokens["alice"]}, headers=forwarded)
    assert "Secure" in session_cookie(resp) and "strict-transport-security" in resp.headers
    # behind the proxy, the rate limit counts each forwarded client on its own
    proxied.post("/api/login", json={"token": "x"}, headers=forwarded)
    assert proxied.post("/api/login", json={"token": "x"}, headers=forwarded).status_code == 429
    other = {**forwarded, "X-Forwarded-For": "198.51.100.4"}
    assert proxied.post("/api/login", json={"token": env.tokens["bob"]}, headers=other).status_code == 200


def test_serve_on_all_interfaces_says_it_speaks_plain_http(tmp_path, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps(task_rows(1)[0]) + "\n")
    result = cli("serve", "--db", str(tmp_path / "r.sqlite"), "--tasks", str(tasks), "--host", "0.0.0.0")
    assert result.exit_code == 0
    notes = [line for line in result.output.splitlines() if "plain HTTP" in line]
    assert len(notes) == 1 and "TLS proxy" in notes[0] and "--trust-proxy" in notes[0]


def test_security_headers_on_every_response_a_500_included(env, tmp_path):
    task = env.next("alice").json()["task_id"]
    h = env.auth("alice")
    responses = {
        "page": env.client.get("/"),
        "asset": env.client.get("/static/label.js"),
        "json": env.client.get("/api/me", headers=h),
        "204": env.client.get("/favicon.ico"),
        "401": env.client.get("/api/me"),
        "404": env.client.get("/nope"),
        "405": env.client.delete("/api/me"),
        "413": env.client.post(
            "/api/rankings", content=b"x" * 70_000, headers={**h, "content-type": "application/json"}
        ),
        "422": env.rank("alice", task, [0, 0, 1]),
        "redirect": env.client.get("/label", follow_redirects=False),
    }

    def crash(*a, **k):
        raise RuntimeError("a bug with a secret path /srv/x in its message")

    env.store.me = crash  # a bug in the store: the client gets one JSON line, the log the traceback
    responses["500"] = env.client.get("/api/me", headers=h)
    msg = assert_one_line_error(responses["500"], 500, r"internal error \(RuntimeError\)")
    assert "/srv/x" not in msg and "Traceback" not in responses["500"].text
    limited = TestClient(create_app(env.db, store=env.store, logins_per_minute=1))
    login(limited, "x")
    responses["429"] = login(limited, "x")
    assert responses["429"].status_code == 429
    for name, resp in responses.items():
        for header, value in SECURITY_HEADERS:
            assert resp.headers.get(header.decode()) == value.decode(), (name, header)
    assert "frame-ancestors 'none'" in responses["500"].headers["content-security-policy"]
