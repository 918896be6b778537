"""The ranking app's SQLite file: how it is opened, its connections, its write transactions and its settings.

WAL mode (readers never block the one writer), ``synchronous=FULL`` (a commit is on disk before the
HTTP 201 goes out, so an acknowledged ranking survives ``kill -9`` and power loss), ``busy_timeout``
(concurrent writers wait instead of failing). Every write that must be atomic is one ``BEGIN IMMEDIATE``
transaction (:meth:`Database._write`), which takes the database's write lock up front. The schema is versioned
(:mod:`aha.label.schema`); :class:`~aha.label.store.Store` builds the app's operations on this class.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aha.label.schema import SCHEMA_VERSION, NewerSchema, migrate
from aha.label.taskfile import LabelError

DEFAULT_LEASE_S = 3600.0  # an open assignment nobody submits frees its slot after this long
DEFAULT_SESSION_S = 12 * 3600.0  # a login lasts a working day


class Refused(LabelError):
    """A request the store turns down: ``status`` is the HTTP code, ``message`` one line (the CLI prints it too)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Database:
    """One SQLite database; safe to share between threads (each thread gets its own connection)."""

    def __init__(self, path: str | Path, lease_s: float = DEFAULT_LEASE_S, session_s: float = DEFAULT_SESSION_S):
        self.path = Path(path)
        self.lease_s, self.session_s = lease_s, session_s
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.schema_before, _ = migrate(self._conn())
        except NewerSchema as e:
            self.close()
            raise LabelError(
                f"--db {self.path}: written by a newer aha (schema v{e.found}; this aha reads up to "
                f"v{SCHEMA_VERSION}): upgrade aha (pip install -U aha) to open it"
            ) from None
        except (sqlite3.DatabaseError, OSError) as e:
            raise LabelError(f"--db {self.path}: cannot open it as a SQLite database ({e})") from None

    # ------------------------------------------------------------------ connections and transactions
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # the commit is on disk before we answer 201
        conn.execute("PRAGMA foreign_keys = ON")
        conn.row_factory = sqlite3.Row
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
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
            c.execute(
                "INSERT INTO meta VALUES ('per_task', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(n),),
            )
