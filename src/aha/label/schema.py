"""The ranking database's schema and its forward migrations, numbered by SQLite's ``PRAGMA user_version``.

Version 0 is a database from before versions were written (it has the version-1 tables, or none).
Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the new ``user_version``
(SQLite's DDL is transactional): a migration that fails leaves the database as it was. A database whose
version is newer than :data:`SCHEMA_VERSION` was written by a newer aha and is refused, not guessed at.
"""

from __future__ import annotations

import sqlite3

V1 = """
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

# version 2: revoking a labeler (their rankings stay), and login sessions that expire
V2 = """
ALTER TABLE labelers ADD COLUMN revoked_at REAL;    -- set: the token no longer works
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,                     -- sha256 of the session cookie's value
    labeler_id INTEGER NOT NULL REFERENCES labelers(id),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX sessions_by_labeler ON sessions (labeler_id);
"""

MIGRATIONS = [V1, V2]  # MIGRATIONS[n - 1] takes a database from version n - 1 to n
SCHEMA_VERSION = len(MIGRATIONS)


class NewerSchema(Exception):
    """The database was written by a newer aha (its ``user_version`` is above :data:`SCHEMA_VERSION`)."""

    def __init__(self, found: int):
        super().__init__(found)
        self.found = found


def user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the database to :data:`SCHEMA_VERSION`; ``(version before, version after)``.

    ``conn`` is in autocommit mode (``isolation_level=None``). Raises :class:`NewerSchema` for a newer database.
    """
    before = user_version(conn)
    if before > SCHEMA_VERSION:
        raise NewerSchema(before)
    for version in range(before + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if user_version(conn) < version:  # another process may have migrated while we waited for the lock
                for statement in _statements(MIGRATIONS[version - 1]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return before, SCHEMA_VERSION


def _statements(script: str) -> list[str]:
    """The SQL statements of ``script`` (``executescript`` would commit our transaction; this does not)."""
    out, current = [], ""
    for line in script.splitlines():
        current += line.split("--")[0] + "\n"
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return [s for s in out if s.rstrip(";").strip()]
