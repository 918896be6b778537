"""Handing out tasks and storing the answers: one ``BEGIN IMMEDIATE`` transaction each, so two labelers asking
at the same moment are serialised, a task never goes to more than ``per_task`` labelers and never twice to the
same one. What can be checked without the lock (a ranking's shape, whose task it is) is checked before taking
it, in time linear in the request."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from aha.data.preferences import normalize_ranking
from aha.label.db import Database, Refused
from aha.label.taskfile import MAX_COMPLETIONS


def check_ranking_size(ranking: Any, limit: int = MAX_COMPLETIONS) -> None:
    """Refused (422) when ``ranking`` names more than ``limit`` indices; stops counting at the limit, so a hostile
    ranking of 30,000 entries is turned away after reading 27 of them."""
    if not isinstance(ranking, (list, tuple)):
        return
    n = 0
    for entry in ranking:
        n += len(entry) if isinstance(entry, (list, tuple)) else 1
        if n > limit:
            raise Refused(422, f"ranking lists more than {limit} indices: a task has at most {limit} completions")


class Assignments(Database):
    """The labelers' side of the store: the next task for a labeler, and their answer to it."""

    def next_task(self, labeler_id: int) -> dict | None:
        """The labeler's open task, else a newly assigned one (fullest unfinished task first, so complete
        tasks — and agreement — appear early), else None. One transaction: never over-assigned."""
        now = time.time()
        with self._write() as c:
            self._expire(c, now)
            row = c.execute(
                "SELECT task_id FROM assignments WHERE labeler_id = ? AND status = 'open'", (labeler_id,)
            ).fetchone()
            if row is None:
                row = c.execute(
                    "SELECT id AS task_id FROM tasks WHERE active < ? AND id NOT IN "
                    "(SELECT task_id FROM assignments WHERE labeler_id = ?) ORDER BY active DESC, id LIMIT 1",
                    (self.per_task, labeler_id),
                ).fetchone()
                if row is None:
                    return None
                c.execute("INSERT INTO assignments VALUES (?, ?, 'open', ?)", (row["task_id"], labeler_id, now))
                c.execute("UPDATE tasks SET active = active + 1 WHERE id = ?", (row["task_id"],))
            task = c.execute("SELECT id, prompt, completions FROM tasks WHERE id = ?", (row["task_id"],)).fetchone()
        return {
            "task_id": task["id"],
            "prompt": json.loads(task["prompt"]),
            "completions": json.loads(task["completions"]),
        }

    def _expire(self, c: sqlite3.Connection, now: float) -> None:
        """Free the slots of open assignments left longer than the lease (a labeler who walked away)."""
        stale = c.execute(
            "SELECT task_id, labeler_id FROM assignments WHERE status = 'open' AND assigned_at < ?",
            (now - self.lease_s,),
        ).fetchall()
        for r in stale:
            c.execute("DELETE FROM assignments WHERE task_id = ? AND labeler_id = ?", (r[0], r[1]))
            c.execute("UPDATE tasks SET active = active - 1 WHERE id = ?", (r[0],))

    def submit(
        self,
        labeler_id: int,
        task_id: int,
        ranking: Any = None,
        skip: bool = False,
        flag: bool = False,
        note: str | None = None,
    ) -> dict:
        """Store one answer to the labeler's open assignment, committed before returning.

        ``ranking`` (tiers best-first, ties nested) is checked against the task's K; ``skip`` gives the slot
        back to other labelers; ``flag`` marks the task unsafe (with or without a ranking). Raises Refused.
        Everything but the final check and the write happens before the write lock, in linear time."""
        if skip and (flag or ranking is not None):
            raise Refused(422, "a skip carries no ranking and no flag: send either skip, or a ranking and/or flag")
        if not skip and not flag and ranking is None:
            raise Refused(
                422,
                "missing 'ranking' (completion indices best-first, ties as nested lists), "
                'or send "skip": true / "flag": true',
            )
        check_ranking_size(ranking)
        a = (
            self._conn()
            .execute(
                "SELECT a.status, json_array_length(t.completions) AS k FROM assignments a JOIN "
                "tasks t ON t.id = a.task_id WHERE a.task_id = ? AND a.labeler_id = ?",
                (task_id, labeler_id),
            )
            .fetchone()
        )
        _check_open(a, task_id)
        tiers = None
        if ranking is not None:
            try:
                tiers = normalize_ranking(ranking, a["k"])
            except ValueError as e:
                raise Refused(422, str(e)) from None
        now = time.time()
        with self._write() as c:  # again under the lock: the lease may have ended, another tab may have answered
            a = c.execute(
                "SELECT status, assigned_at FROM assignments WHERE task_id = ? AND labeler_id = ?",
                (task_id, labeler_id),
            ).fetchone()
            _check_open(a, task_id)
            c.execute(
                "INSERT INTO rankings (task_id, labeler_id, ranking, skipped, flagged, note, seconds, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    labeler_id,
                    json.dumps(tiers) if tiers else None,
                    int(skip),
                    int(flag),
                    note,
                    now - a["assigned_at"],
                    now,
                ),
            )
            c.execute(
                "UPDATE assignments SET status = ? WHERE task_id = ? AND labeler_id = ?",
                ("skipped" if skip else "done", task_id, labeler_id),
            )
            if skip:
                c.execute("UPDATE tasks SET active = active - 1 WHERE id = ?", (task_id,))
        return {"task_id": task_id, "ranking": tiers, "skipped": skip, "flagged": flag}


def _check_open(assignment: sqlite3.Row | None, task_id: int) -> None:
    if assignment is None:  # someone else's task or no such task: the same answer, so ids reveal nothing
        raise Refused(403, f"task {task_id} is not assigned to you: get yours from GET /api/next")
    if assignment["status"] != "open":
        raise Refused(409, f"you already answered task {task_id}")
