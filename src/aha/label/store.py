"""The ranking app's database: tasks, labelers, assignments and rankings in one SQLite file.

WAL mode (readers never block the one writer), ``synchronous=FULL`` (a commit is on disk before the
HTTP 201 goes out, so an acknowledged ranking survives ``kill -9`` and power loss), ``busy_timeout``
(concurrent writers wait instead of failing). Every write that must be atomic — handing out a task,
storing a ranking — is one ``BEGIN IMMEDIATE`` transaction, which takes the database's write lock up
front: two labelers asking at the same moment are serialised, so a task never goes to more than
``per_task`` labelers and never twice to the same one.

Tokens are never stored: a labeler's row holds ``sha256(token)``; the token is shown once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from aha.data.preferences import PreferenceRow, normalize_ranking, ranking_row
from aha.errors import AhaError

MAX_COMPLETIONS = 9  # the keyboard picks with 1..9
DEFAULT_LEASE_S = 3600.0  # an open assignment nobody submits frees its slot after this long

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,            -- sha256 of (prompt, completions): importing twice adds nothing
    prompt TEXT NOT NULL,                -- JSON: a text or a list of chat messages
    completions TEXT NOT NULL,           -- JSON list of K texts (or message lists)
    extra TEXT NOT NULL DEFAULT '{}',    -- JSON: the row's other columns, kept for export
    active INTEGER NOT NULL DEFAULT 0    -- open + done assignments (slots taken, at most per_task)
);
CREATE INDEX IF NOT EXISTS tasks_by_active ON tasks (active, id);
CREATE TABLE IF NOT EXISTS labelers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    is_admin INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    labeler_id INTEGER NOT NULL REFERENCES labelers(id),
    status TEXT NOT NULL CHECK (status IN ('open', 'done', 'skipped')),
    assigned_at REAL NOT NULL,
    PRIMARY KEY (task_id, labeler_id)    -- never the same task twice to one labeler
);
CREATE INDEX IF NOT EXISTS open_assignments ON assignments (labeler_id, status);
CREATE TABLE IF NOT EXISTS rankings (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    labeler_id INTEGER NOT NULL REFERENCES labelers(id),
    ranking TEXT,                        -- JSON tiers best-first; NULL for a skip or a flag without ranking
    skipped INTEGER NOT NULL DEFAULT 0,
    flagged INTEGER NOT NULL DEFAULT 0,
    note TEXT,
    seconds REAL,                        -- from assignment to submission
    created_at REAL NOT NULL,
    UNIQUE (task_id, labeler_id)
);
"""


class LabelError(AhaError, ValueError):
    """A user's mistake with the ranking app (a bad tasks file, an unknown labeler); the message says the fix."""


class Refused(Exception):
    """A request the store turns down: ``status`` is the HTTP code, ``message`` one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_task(row: Any, where: str = "task") -> tuple[Any, list, dict]:
    """``(prompt, completions, extra)`` of one tasks row, or LabelError naming what is wrong."""
    if not isinstance(row, dict):
        raise LabelError(f"{where}: expected a JSON object with 'prompt' and 'completions', got {type(row).__name__}")
    for key in ("prompt", "completions"):
        if key not in row:
            raise LabelError(f"{where}: missing field '{key}' (a task is {{\"prompt\": ..., \"completions\": [...]}})")
    prompt, comps = row["prompt"], row["completions"]
    if not _is_text(prompt):
        raise LabelError(f"{where}: 'prompt' must be a text or a list of chat messages")
    if not isinstance(comps, list) or not 2 <= len(comps) <= MAX_COMPLETIONS:
        n = len(comps) if isinstance(comps, list) else type(comps).__name__
        raise LabelError(f"{where}: 'completions' must be a list of 2 to {MAX_COMPLETIONS} texts, got {n}")
    for i, c in enumerate(comps):
        if not _is_text(c):
            raise LabelError(f"{where}: completion {i} must be a text or a list of chat messages")
    return prompt, comps, {k: v for k, v in row.items() if k not in ("prompt", "completions")}


def _is_text(x: Any) -> bool:
    return isinstance(x, str) or (isinstance(x, list) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in x))


def kendalls_w(rankings: list[list[list[int]]], k: int) -> float | None:
    """Kendall's coefficient of concordance W of m rankings (tiers best-first) of the same k items.

    Tied items share the mean of their ranks, with the usual tie correction
    W = 12·S / (m²(k³ − k) − m·Σ_j T_j),  S = Σ_i (R_i − R̄)²,  T_j = Σ_ties (t³ − t).
    1 = all agree, 0 = no agreement. None when undefined (m < 2, or every ranking one tie).

    >>> kendalls_w([[[0], [1], [2]], [[0], [1], [2]]], 3)   # identical
    1.0
    >>> kendalls_w([[[0], [1], [2]], [[2], [1], [0]]], 3)   # reversed: R = (4, 4, 4), S = 0
    0.0
    """
    m = len(rankings)
    if m < 2:
        return None
    totals, ties = [0.0] * k, 0.0
    for tiers in rankings:
        place = 1
        for tier in tiers:
            mean_rank = place + (len(tier) - 1) / 2
            for i in tier:
                totals[i] += mean_rank
            ties += len(tier) ** 3 - len(tier)
            place += len(tier)
    mean = sum(totals) / k
    s = sum((r - mean) ** 2 for r in totals)
    denom = m * m * (k ** 3 - k) - m * ties
    return None if denom <= 0 else 12 * s / denom


class Store:
    """One SQLite database; safe to share between threads (each thread gets its own connection)."""

    def __init__(self, path: str | Path, lease_s: float = DEFAULT_LEASE_S):
        self.path = Path(path)
        self.lease_s = lease_s
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            conn.executescript(SCHEMA)
        except (sqlite3.DatabaseError, OSError) as e:
            raise LabelError(f"--db {self.path}: cannot open it as a SQLite database ({e})") from None

    # ------------------------------------------------------------------ connections and transactions
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # the commit is on disk before we answer 201
            conn.execute("PRAGMA foreign_keys = ON")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: the write lock first, then read-decide-write, then commit."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ settings
    @property
    def per_task(self) -> int:
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'per_task'").fetchone()
        return int(row[0]) if row else 1

    def set_per_task(self, n: int) -> None:
        if n < 1:
            raise LabelError(f"--per-task {n}: each task needs at least 1 labeler")
        with self._write() as c:
            c.execute("INSERT INTO meta VALUES ('per_task', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                      (str(n),))

    # ------------------------------------------------------------------ tasks
    def add_tasks(self, rows: list[dict]) -> tuple[int, int]:
        """Insert checked task rows; ``(added, already present)``. Idempotent on (prompt, completions)."""
        added = 0
        with self._write() as c:
            for row in rows:
                prompt, comps, extra = check_task(row)
                key = hashlib.sha256(json.dumps([prompt, comps], sort_keys=True).encode()).hexdigest()
                cur = c.execute("INSERT OR IGNORE INTO tasks (key, prompt, completions, extra) VALUES (?, ?, ?, ?)",
                                (key, json.dumps(prompt), json.dumps(comps), json.dumps(extra)))
                added += cur.rowcount
        return added, len(rows) - added

    def task_count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM tasks").fetchone()[0]

    # ------------------------------------------------------------------ labelers
    def add_labeler(self, name: str, admin: bool = False) -> str:
        """Create a labeler (or the admin); returns the token, which is stored only as its hash."""
        name = name.strip()
        if not name or len(name) > 64:
            raise LabelError("a labeler's name must be 1 to 64 characters")
        token = secrets.token_urlsafe(24)
        try:
            with self._write() as c:
                c.execute("INSERT INTO labelers (name, token_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                          (name, hash_token(token), int(admin), time.time()))
        except sqlite3.IntegrityError:
            raise LabelError(f"a labeler named {name!r} already exists: choose another name") from None
        return token

    def ensure_admin(self) -> str | None:
        """The admin's token if this call created the admin (first start), else None (it was shown before)."""
        if self._conn().execute("SELECT 1 FROM labelers WHERE is_admin = 1").fetchone():
            return None
        return self.add_labeler("admin", admin=True)

    def user_for_token(self, token: str) -> sqlite3.Row | None:
        return self._conn().execute("SELECT id, name, is_admin FROM labelers WHERE token_hash = ?",
                                    (hash_token(token),)).fetchone()

    # ------------------------------------------------------------------ assignment
    def next_task(self, labeler_id: int) -> dict | None:
        """The labeler's open task, else a newly assigned one (fullest unfinished task first, so complete
        tasks — and agreement — appear early), else None. One transaction: never over-assigned."""
        now = time.time()
        with self._write() as c:
            self._expire(c, now)
            row = c.execute("SELECT task_id FROM assignments WHERE labeler_id = ? AND status = 'open'",
                            (labeler_id,)).fetchone()
            if row is None:
                row = c.execute(
                    "SELECT id AS task_id FROM tasks WHERE active < ? AND id NOT IN "
                    "(SELECT task_id FROM assignments WHERE labeler_id = ?) ORDER BY active DESC, id LIMIT 1",
                    (self.per_task, labeler_id)).fetchone()
                if row is None:
                    return None
                c.execute("INSERT INTO assignments VALUES (?, ?, 'open', ?)", (row["task_id"], labeler_id, now))
                c.execute("UPDATE tasks SET active = active + 1 WHERE id = ?", (row["task_id"],))
            task = c.execute("SELECT id, prompt, completions FROM tasks WHERE id = ?", (row["task_id"],)).fetchone()
        return {"task_id": task["id"], "prompt": json.loads(task["prompt"]),
                "completions": json.loads(task["completions"])}

    def _expire(self, c: sqlite3.Connection, now: float) -> None:
        """Free the slots of open assignments left longer than the lease (a labeler who walked away)."""
        stale = c.execute("SELECT task_id, labeler_id FROM assignments WHERE status = 'open' AND assigned_at < ?",
                          (now - self.lease_s,)).fetchall()
        for r in stale:
            c.execute("DELETE FROM assignments WHERE task_id = ? AND labeler_id = ?", (r[0], r[1]))
            c.execute("UPDATE tasks SET active = active - 1 WHERE id = ?", (r[0],))

    def submit(self, labeler_id: int, task_id: int, ranking: Any = None, skip: bool = False, flag: bool = False,
               note: str | None = None) -> dict:
        """Store one answer to the labeler's open assignment, committed before returning.

        ``ranking`` (tiers best-first, ties nested) is checked against the task's K; ``skip`` gives the slot
        back to other labelers; ``flag`` marks the task unsafe (with or without a ranking). Raises Refused."""
        if skip and (flag or ranking is not None):
            raise Refused(422, "a skip carries no ranking and no flag: send either skip, or a ranking and/or flag")
        if not skip and not flag and ranking is None:
            raise Refused(422, "missing 'ranking' (completion indices best-first, ties as nested lists), "
                               "or send \"skip\": true / \"flag\": true")
        now = time.time()
        with self._write() as c:
            a = c.execute("SELECT status, assigned_at FROM assignments WHERE task_id = ? AND labeler_id = ?",
                          (task_id, labeler_id)).fetchone()
            if a is None:  # someone else's task or no such task: the same answer, so ids reveal nothing
                raise Refused(403, f"task {task_id} is not assigned to you: get yours from GET /api/next")
            if a["status"] != "open":
                raise Refused(409, f"you already answered task {task_id}")
            tiers = None
            if ranking is not None:
                k = len(json.loads(c.execute("SELECT completions FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]))
                try:
                    tiers = normalize_ranking(ranking, k)
                except ValueError as e:
                    raise Refused(422, str(e)) from None
            c.execute("INSERT INTO rankings (task_id, labeler_id, ranking, skipped, flagged, note, seconds, created_at)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (task_id, labeler_id, json.dumps(tiers) if tiers else None, int(skip), int(flag), note,
                       now - a["assigned_at"], now))
            c.execute("UPDATE assignments SET status = ? WHERE task_id = ? AND labeler_id = ?",
                      ("skipped" if skip else "done", task_id, labeler_id))
            if skip:
                c.execute("UPDATE tasks SET active = active - 1 WHERE id = ?", (task_id,))
        return {"task_id": task_id, "ranking": tiers, "skipped": skip, "flagged": flag}

    # ------------------------------------------------------------------ reading
    def me(self, labeler_id: int) -> dict:
        c = self._conn()
        r = c.execute("SELECT COUNT(*) n, COALESCE(SUM(ranking IS NOT NULL), 0) ranked, COALESCE(SUM(skipped), 0) "
                      "skipped, COALESCE(SUM(flagged), 0) flagged FROM rankings WHERE labeler_id = ?",
                      (labeler_id,)).fetchone()
        available = c.execute(
            "SELECT COUNT(*) FROM tasks WHERE (active < ? AND id NOT IN (SELECT task_id FROM assignments WHERE "
            "labeler_id = ?)) OR id IN (SELECT task_id FROM assignments WHERE labeler_id = ? AND status = 'open')",
            (self.per_task, labeler_id, labeler_id)).fetchone()[0]
        name = c.execute("SELECT name FROM labelers WHERE id = ?", (labeler_id,)).fetchone()[0]
        return {"name": name, "answered": r["n"], "ranked": r["ranked"], "skipped": r["skipped"],
                "flagged": r["flagged"], "available": available}

    def stats(self) -> dict:
        """Progress, per-labeler counts and speed, agreement (Kendall's W), flagged items."""
        c = self._conn()
        per_task, n_tasks = self.per_task, self.task_count()
        done = c.execute("SELECT COUNT(*) FROM assignments WHERE status = 'done'").fetchone()[0]
        complete = c.execute("SELECT COUNT(*) FROM (SELECT task_id FROM assignments WHERE status = 'done' "
                             "GROUP BY task_id HAVING COUNT(*) >= ?)", (per_task,)).fetchone()[0]
        labelers = []
        for lab in c.execute("SELECT id, name, is_admin FROM labelers ORDER BY id").fetchall():
            rows = c.execute("SELECT ranking IS NOT NULL AS ranked, skipped, flagged, seconds, created_at "
                             "FROM rankings WHERE labeler_id = ? ORDER BY created_at", (lab["id"],)).fetchall()
            if lab["is_admin"] and not rows:
                continue
            secs = [r["seconds"] for r in rows if r["seconds"] is not None and not r["skipped"]]
            span_h = (rows[-1]["created_at"] - rows[0]["created_at"]) / 3600 if len(rows) > 1 else 0
            labelers.append({
                "name": lab["name"], "ranked": sum(r["ranked"] for r in rows),
                "skipped": sum(r["skipped"] for r in rows), "flagged": sum(r["flagged"] for r in rows),
                "median_seconds": round(statistics.median(secs), 1) if secs else None,
                "per_hour": round((len(rows) - 1) / span_h, 1) if span_h * 3600 >= 60 else None,  # a rate needs a minute
                "last_at": rows[-1]["created_at"] if rows else None})
        by_task: dict[int, list] = {}
        k_of: dict[int, int] = {}
        for r in c.execute("SELECT r.task_id, r.ranking, t.completions FROM rankings r JOIN tasks t ON "
                           "t.id = r.task_id WHERE r.ranking IS NOT NULL").fetchall():
            by_task.setdefault(r["task_id"], []).append(json.loads(r["ranking"]))
            k_of[r["task_id"]] = len(json.loads(r["completions"]))
        ws = [w for t, rs in by_task.items() if len(rs) >= 2 and (w := kendalls_w(rs, k_of[t])) is not None]
        flagged = [{"task_id": r["task_id"], "labeler": r["name"], "note": r["note"], "at": r["created_at"],
                    "prompt": _preview(json.loads(r["prompt"]))}
                   for r in c.execute("SELECT r.task_id, l.name, r.note, r.created_at, t.prompt FROM rankings r "
                                      "JOIN labelers l ON l.id = r.labeler_id JOIN tasks t ON t.id = r.task_id "
                                      "WHERE r.flagged = 1 ORDER BY r.created_at DESC LIMIT 200").fetchall()]
        return {
            "progress": {"tasks": n_tasks, "per_task": per_task, "target": n_tasks * per_task, "answered": done,
                         "tasks_complete": complete,
                         "skipped": c.execute("SELECT COUNT(*) FROM rankings WHERE skipped = 1").fetchone()[0],
                         "open": c.execute("SELECT COUNT(*) FROM assignments WHERE status = 'open'").fetchone()[0]},
            "labelers": labelers,
            "agreement": {"kendalls_w_mean": round(sum(ws) / len(ws), 4) if ws else None, "tasks": len(ws),
                          "kendalls_w_median": round(statistics.median(ws), 4) if ws else None},
            "flagged": flagged,
        }

    def export_rows(self) -> Iterator[dict]:
        """One ranking-format row per stored ranking (ties kept), with the task's extra columns, ``task_id``,
        ``labeler``, ``created_at`` and ``flagged`` when set. Skips carry no ranking and are left out."""
        c = self._conn()
        for r in c.execute("SELECT r.task_id, r.ranking, r.flagged, r.created_at, l.name, t.prompt, t.completions, "
                           "t.extra FROM rankings r JOIN labelers l ON l.id = r.labeler_id JOIN tasks t ON "
                           "t.id = r.task_id WHERE r.ranking IS NOT NULL ORDER BY r.id"):
            extra = {**json.loads(r["extra"]), "task_id": r["task_id"], "labeler": r["name"],
                     "created_at": round(r["created_at"], 3)}
            if r["flagged"]:
                extra["flagged"] = True
            yield ranking_row(PreferenceRow(json.loads(r["prompt"]), json.loads(r["completions"]),
                                            json.loads(r["ranking"]), extra))


def _preview(prompt: Any, n: int = 200) -> str:
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return text if len(text) <= n else text[:n] + "…"


def jsonl_rows(path: Path, option: str, if_empty: str) -> list[tuple[int, Any]]:
    """``(line number, parsed value)`` of each non-blank line of the JSONL file given as ``option``; LabelError for a
    missing or unreadable file, a line that is not JSON, or no rows (``if_empty`` says what is missing)."""
    if not path.is_file():
        raise LabelError(f"{option} {path}: file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LabelError(f"{option} {path}: cannot read it ({e})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise LabelError(f"{path} line {n}: not valid JSON ({e.msg})") from None
    if not rows:
        raise LabelError(f"{option} {path}: {if_empty}")
    return rows


def read_tasks(path: Path) -> list[dict]:
    """Rows of a tasks JSONL file, each checked; LabelError naming the file and line of a bad one."""
    rows = jsonl_rows(path, "--tasks", "no tasks in it (one JSON object per line: prompt, completions)")
    for n, row in rows:
        check_task(row, f"{path} line {n}")
    return [row for _, row in rows]
