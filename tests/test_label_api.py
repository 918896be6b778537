"""The ranking app's HTTP API and store: hostile requests, fair assignment, export for the reward model."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from aha.cli import app as aha_cli
from aha.data.preferences import parse_preference
from aha.label.app import CSP, create_app
from aha.label.store import Store, kendalls_w

SCRIPT = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'


def task_rows(n: int, k: int = 3) -> list[dict]:
    return [
        {"prompt": f"prompt {i}", "completions": [f"answer {i}.{j}" for j in range(k)], "source": "test"}
        for i in range(n)
    ]


class Env:
    """A store with tasks and labelers, and a TestClient over the app."""

    def __init__(self, tmp_path: Path, tasks: list[dict], per_task: int = 1, labelers=("alice", "bob", "carol")):
        self.db = tmp_path / "rankings.sqlite"
        self.store = Store(self.db)
        self.store.set_per_task(per_task)
        self.store.add_tasks(tasks)
        self.admin_token = self.store.ensure_admin()
        self.tokens = {name: self.store.add_labeler(name) for name in labelers}
        self.client = TestClient(create_app(self.db, store=self.store))

    def auth(self, who: str) -> dict:
        token = self.admin_token if who == "admin" else self.tokens[who]
        return {"Authorization": f"Bearer {token}"}

    def next(self, who: str):
        return self.client.get("/api/next", headers=self.auth(who))

    def rank(self, who: str, task_id, ranking=None, **extra):
        body = {"task_id": task_id, **({"ranking": ranking} if ranking is not None else {}), **extra}
        return self.client.post("/api/rankings", json=body, headers=self.auth(who))


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path, task_rows(4))


def assert_one_line_error(resp, status: int, pattern: str = "") -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "\n" not in resp.text
    message = resp.json()["error"]
    assert re.search(pattern, message), message
    return message


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


# ---------------------------------------------------------------------- assignment: per task N, never twice
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


# ---------------------------------------------------------------------- stats and agreement
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


# ---------------------------------------------------------------------- export → the reward model's reader
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


# ---------------------------------------------------------------------- the CLI
def test_cli_serve_imports_idempotently_and_shows_the_admin_token_once(tmp_path, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw))
    tasks = tmp_path / "samples.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in task_rows(3)))
    db = tmp_path / "r.sqlite"
    args = ["label", "serve", "--db", str(db), "--tasks", str(tasks), "--port", "8123", "--per-task", "2"]
    first = CliRunner().invoke(aha_cli, args)
    assert first.exit_code == 0, first.output
    assert "tasks: 3 added, 0 already in" in first.output and "admin token (shown once" in first.output
    token = re.search(r"store it\): (\S+)", first.output).group(1)
    second = CliRunner().invoke(aha_cli, args[:-2])
    assert second.exit_code == 0 and "tasks: 0 added, 3 already in" in second.output
    assert "admin token" not in second.output and "each task goes to 2 labeler(s)" in second.output
    assert served[0] == {"host": "127.0.0.1", "port": 8123, "log_level": "warning", "proxy_headers": False}
    assert "plain HTTP" not in first.output  # only said where other machines can connect
    assert Store(db).user_for_token(token)["is_admin"] == 1
    add = CliRunner().invoke(aha_cli, ["label", "add-labeler", "dana", "--db", str(db)])
    assert add.exit_code == 0 and Store(db).user_for_token(add.output.strip())["name"] == "dana"


@pytest.mark.parametrize(
    "content, pattern",
    [
        (None, "file not found"),
        ('{"prompt": "p", "completions": ["a", "b"]}\n{"prompt": "p"', r"line 2: not valid JSON"),
        ('{"prompt": "p", "completions": ["only one"]}', r"line 1: 'completions' must be a list of 2 to 26"),
        ('{"completions": ["a", "b"]}', r"line 1: missing field 'prompt'"),
        ('{"prompt": "p", "completions": ["a", 3]}', r"line 1: completion 1 must be a text"),
        ("", "no tasks in it"),
    ],
)
def test_cli_bad_tasks_file_is_one_line_exit_2(tmp_path, content, pattern):
    tasks = tmp_path / "samples.jsonl"
    if content is not None:
        tasks.write_text(content)
    result = CliRunner().invoke(aha_cli, ["label", "serve", "--db", str(tmp_path / "r.sqlite"), "--tasks", str(tasks)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), result.output


def test_cli_serve_model_samples_k_completions_first(tmp_path, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(3)))
    db = tmp_path / "r.sqlite"
    result = CliRunner().invoke(
        aha_cli,
        [
            "label",
            "serve",
            "--db",
            str(db),
            "--model",
            "tiny:layers=1,hidden=16,heads=2,ff=32",
            "--prompts",
            str(prompts),
            "--k",
            "3",
            "--max-new-tokens",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sampled 3 completions for each of 3 prompts" in result.output
    env_store = Store(db)
    rows = [json.loads(line) for line in (tmp_path / "r-samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["completions"]) == 3 and r["answer"] for r in rows)
    assert env_store.task_count() == 3
    missing = CliRunner().invoke(aha_cli, ["label", "serve", "--db", str(db), "--model", "tiny"])
    assert missing.exit_code == 2 and "--model and --prompts go together" in missing.output
