"""The ranking app's tests share these: task rows, a store with tasks and labelers behind a TestClient (:class:`Env`),
and the check that an error answer is one line of JSON."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from aha.label.app import create_app
from aha.label.store import Store


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


def assert_one_line_error(resp, status: int, pattern: str = "") -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "\n" not in resp.text
    message = resp.json()["error"]
    assert re.search(pattern, message), message
    return message
