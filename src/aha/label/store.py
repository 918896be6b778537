"""The ranking app's database: tasks, labelers, sessions, assignments and rankings in one SQLite file.

Split by subject: :mod:`aha.label.db` opens the file (WAL, ``synchronous=FULL``: an acknowledged ranking survives
``kill -9`` and power loss) and runs every atomic write as one ``BEGIN IMMEDIATE`` transaction;
:mod:`aha.label.assignment` hands out tasks and stores the answers (a task never goes to more than ``per_task``
labelers, nor twice to the same one); this module adds the tasks, the labelers and their sessions, and reading
the data out (the labeler's counts, the admin's statistics, the export, a backup).

Tokens are never stored: a labeler's row holds ``sha256(token)``; the token is shown once. Logging in opens
a session (its own random value, also stored hashed) that expires; revoking a labeler ends their token and
sessions at once and keeps their rankings. The schema is versioned (:mod:`aha.label.schema`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from aha.data.preferences import PreferenceRow, ranking_row
from aha.label.assignment import Assignments
from aha.label.db import Refused
from aha.label.stats import admin_stats, kendalls_w  # noqa: F401 (kendalls_w: re-exported)
from aha.label.taskfile import (  # noqa: F401
    MAX_COMPLETIONS,
    LabelError,
    check_task,
    jsonl_rows,
    read_tasks,
)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Store(Assignments):
    """The ranking app's database (:class:`~aha.label.db.Database`: one SQLite file, safe to share between threads)
    with every operation the app and ``aha label`` need."""

    # ------------------------------------------------------------------ tasks
    def add_tasks(self, rows: list[dict]) -> tuple[int, int]:
        """Insert checked task rows; ``(added, already present)``. Idempotent on (prompt, completions)."""
        added = 0
        with self._write() as c:
            for row in rows:
                prompt, comps, extra = check_task(row)
                key = hashlib.sha256(json.dumps([prompt, comps], sort_keys=True).encode()).hexdigest()
                cur = c.execute(
                    "INSERT OR IGNORE INTO tasks (key, prompt, completions, extra) VALUES (?, ?, ?, ?)",
                    (key, json.dumps(prompt), json.dumps(comps), json.dumps(extra)),
                )
                added += cur.rowcount
        return added, len(rows) - added

    def task_count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM tasks").fetchone()[0]

    # ------------------------------------------------------------------ labelers, tokens and sessions
    def add_labeler(self, name: str, admin: bool = False) -> str:
        """Create a labeler (or the admin); returns the token, which is stored only as its hash."""
        name = name.strip()
        if not name or len(name) > 64:
            raise LabelError("a labeler's name must be 1 to 64 characters")
        token = secrets.token_urlsafe(24)
        try:
            with self._write() as c:
                c.execute(
                    "INSERT INTO labelers (name, token_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                    (name, hash_token(token), int(admin), time.time()),
                )
        except sqlite3.IntegrityError:
            raise LabelError(f"a labeler named {name!r} already exists: choose another name") from None
        return token

    def ensure_admin(self) -> str | None:
        """The admin's token if this call created the admin (first start), else None (it was shown before)."""
        if self._conn().execute("SELECT 1 FROM labelers WHERE is_admin = 1").fetchone():
            return None
        return self.add_labeler("admin", admin=True)

    def user_for_token(self, token: str) -> sqlite3.Row | None:
        """The labeler whose token this is, unless revoked; None otherwise."""
        return (
            self._conn()
            .execute(
                "SELECT id, name, is_admin FROM labelers WHERE token_hash = ? AND revoked_at IS NULL",
                (hash_token(token),),
            )
            .fetchone()
        )

    def _labeler(self, c: sqlite3.Connection, name: str | None) -> sqlite3.Row:
        if name is None:
            row = c.execute("SELECT id, name, is_admin, revoked_at FROM labelers WHERE is_admin = 1").fetchone()
        else:
            row = c.execute(
                "SELECT id, name, is_admin, revoked_at FROM labelers WHERE name = ?", (name.strip(),)
            ).fetchone()
        if row is None:
            raise Refused(
                404,
                f"no labeler named {name!r} in {self.path.name}"
                if name is not None
                else f"{self.path.name} has no admin yet: `aha label serve` creates one",
            )
        return row

    def revoke(self, name: str) -> bool:
        """Revoke labeler ``name``: their token and sessions stop working at once, their open assignments go back
        to the pool, their rankings stay. False if they were revoked before."""
        now = time.time()
        with self._write() as c:
            lab = self._labeler(c, name)
            if lab["is_admin"]:
                raise Refused(409, "the admin cannot be revoked: `aha label new-token` replaces the admin token")
            if lab["revoked_at"] is not None:
                return False
            c.execute("UPDATE labelers SET revoked_at = ? WHERE id = ?", (now, lab["id"]))
            c.execute("DELETE FROM sessions WHERE labeler_id = ?", (lab["id"],))
            for (task_id,) in c.execute(
                "SELECT task_id FROM assignments WHERE labeler_id = ? AND status = 'open'", (lab["id"],)
            ).fetchall():
                c.execute("DELETE FROM assignments WHERE task_id = ? AND labeler_id = ?", (task_id, lab["id"]))
                c.execute("UPDATE tasks SET active = active - 1 WHERE id = ?", (task_id,))
        return True

    def new_token(self, name: str | None = None) -> str:
        """A new token for ``name`` (None: the admin); the old token and the labeler's sessions stop at once."""
        token = secrets.token_urlsafe(24)
        with self._write() as c:
            lab = self._labeler(c, name)
            if lab["revoked_at"] is not None:
                raise Refused(409, f"{lab['name']!r} is revoked: add them again under another name")
            c.execute("UPDATE labelers SET token_hash = ? WHERE id = ?", (hash_token(token), lab["id"]))
            c.execute("DELETE FROM sessions WHERE labeler_id = ?", (lab["id"],))
        return token

    def open_session(self, labeler_id: int) -> str:
        """A new login session for the labeler (its value goes in the cookie; only its hash is stored)."""
        token, now = secrets.token_urlsafe(32), time.time()
        with self._write() as c:
            c.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            c.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?)", (hash_token(token), labeler_id, now, now + self.session_s)
            )
        return token

    def user_for_session(self, token: str) -> sqlite3.Row | None:
        """The labeler of an unexpired session, unless revoked; None otherwise."""
        return (
            self._conn()
            .execute(
                "SELECT l.id, l.name, l.is_admin FROM sessions s JOIN labelers l ON l.id = s.labeler_id WHERE "
                "s.token_hash = ? AND s.expires_at > ? AND l.revoked_at IS NULL",
                (hash_token(token), time.time()),
            )
            .fetchone()
        )

    def end_session(self, token: str) -> None:
        with self._write() as c:
            c.execute("DELETE FROM sessions WHERE token_hash = ?", (hash_token(token),))

    # ------------------------------------------------------------------ reading
    def me(self, labeler_id: int) -> dict:
        c = self._conn()
        r = c.execute(
            "SELECT COUNT(*) n, COALESCE(SUM(ranking IS NOT NULL), 0) ranked, COALESCE(SUM(skipped), 0) "
            "skipped, COALESCE(SUM(flagged), 0) flagged FROM rankings WHERE labeler_id = ?",
            (labeler_id,),
        ).fetchone()
        available = c.execute(
            "SELECT COUNT(*) FROM tasks WHERE (active < ? AND id NOT IN (SELECT task_id FROM assignments WHERE "
            "labeler_id = ?)) OR id IN (SELECT task_id FROM assignments WHERE labeler_id = ? AND status = 'open')",
            (self.per_task, labeler_id, labeler_id),
        ).fetchone()[0]
        name = c.execute("SELECT name FROM labelers WHERE id = ?", (labeler_id,)).fetchone()[0]
        return {
            "name": name,
            "answered": r["n"],
            "ranked": r["ranked"],
            "skipped": r["skipped"],
            "flagged": r["flagged"],
            "available": available,
        }

    def stats(self) -> dict:
        """Progress, per-labeler counts and speed, agreement (Kendall's W), flagged items."""
        return admin_stats(self._conn(), self.per_task)

    def export_rows(self) -> Iterator[dict]:
        """One ranking-format row per stored ranking (ties kept), with the task's extra columns, ``task_id``,
        ``labeler``, ``created_at`` and ``flagged`` when set. Skips carry no ranking and are left out.

        Reads on a connection of its own, in one read transaction: a streamed export may be resumed on any
        thread, and it sees one snapshot while labelers go on writing."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            for r in conn.execute(
                "SELECT r.task_id, r.ranking, r.flagged, r.created_at, l.name, t.prompt, "
                "t.completions, t.extra FROM rankings r JOIN labelers l ON l.id = r.labeler_id "
                "JOIN tasks t ON t.id = r.task_id WHERE r.ranking IS NOT NULL ORDER BY r.id"
            ):
                extra = {
                    **json.loads(r["extra"]),
                    "task_id": r["task_id"],
                    "labeler": r["name"],
                    "created_at": round(r["created_at"], 3),
                }
                if r["flagged"]:
                    extra["flagged"] = True
                yield ranking_row(
                    PreferenceRow(
                        json.loads(r["prompt"]), json.loads(r["completions"]), json.loads(r["ranking"]), extra
                    )
                )
        finally:
            conn.close()

    def backup(self, out: str | Path) -> dict:
        """Copy the database to ``out`` with SQLite's online backup API: one consistent snapshot, taken while the
        server goes on writing (WAL: the copy reads, writers do not wait). Written beside ``out`` and renamed
        into place, so ``out`` is never half a database. Returns the copy's counts."""
        out = Path(out)
        if out.exists() and out.resolve() == self.path.resolve():
            raise LabelError(f"--out {out}: that is the database itself; choose another file")
        tmp = out.with_name(out.name + ".partial")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            src, dst = self._connect(), sqlite3.connect(tmp, isolation_level=None)
            try:
                src.backup(dst)  # pages=-1: the whole copy in one step, inside one read snapshot
                dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
                ok = dst.execute("PRAGMA integrity_check").fetchone()[0]
                counts = {
                    t: dst.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("rankings", "tasks", "labelers")
                }
            finally:
                dst.close()
                src.close()
            if ok != "ok":
                raise LabelError(f"--out {out}: the copy failed SQLite's integrity check ({ok}); nothing replaced")
            os.replace(tmp, out)
        except OSError as e:
            raise LabelError(f"--out {out}: cannot write it ({e.strerror or e})") from None
        finally:
            tmp.unlink(missing_ok=True)
        return counts
