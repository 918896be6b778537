"""The admin page's numbers: progress, per-labeler counts and speed, agreement (Kendall's W), flagged items."""

from __future__ import annotations

import json
import sqlite3
import statistics
from typing import Any


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
    denom = m * m * (k**3 - k) - m * ties
    return None if denom <= 0 else 12 * s / denom


def admin_stats(c: sqlite3.Connection, per_task: int) -> dict:
    """Progress, per-labeler counts and speed, agreement (Kendall's W), flagged items."""
    n_tasks = c.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    done = c.execute("SELECT COUNT(*) FROM assignments WHERE status = 'done'").fetchone()[0]
    complete = c.execute(
        "SELECT COUNT(*) FROM (SELECT task_id FROM assignments WHERE status = 'done' "
        "GROUP BY task_id HAVING COUNT(*) >= ?)",
        (per_task,),
    ).fetchone()[0]
    labelers = []
    for lab in c.execute("SELECT id, name, is_admin, revoked_at FROM labelers ORDER BY id").fetchall():
        rows = c.execute(
            "SELECT ranking IS NOT NULL AS ranked, skipped, flagged, seconds, created_at "
            "FROM rankings WHERE labeler_id = ? ORDER BY created_at",
            (lab["id"],),
        ).fetchall()
        if lab["is_admin"] and not rows:
            continue
        secs = [r["seconds"] for r in rows if r["seconds"] is not None and not r["skipped"]]
        span_h = (rows[-1]["created_at"] - rows[0]["created_at"]) / 3600 if len(rows) > 1 else 0
        labelers.append(
            {
                "name": lab["name"],
                "ranked": sum(r["ranked"] for r in rows),
                "skipped": sum(r["skipped"] for r in rows),
                "flagged": sum(r["flagged"] for r in rows),
                "median_seconds": round(statistics.median(secs), 1) if secs else None,
                "per_hour": round((len(rows) - 1) / span_h, 1)
                if span_h * 3600 >= 60
                else None,  # a rate needs a minute
                "last_at": rows[-1]["created_at"] if rows else None,
                "admin": bool(lab["is_admin"]),
                "revoked": lab["revoked_at"] is not None,
            }
        )
    by_task: dict[int, list] = {}
    k_of: dict[int, int] = {}
    for r in c.execute(
        "SELECT r.task_id, r.ranking, t.completions FROM rankings r JOIN tasks t ON "
        "t.id = r.task_id WHERE r.ranking IS NOT NULL"
    ).fetchall():
        by_task.setdefault(r["task_id"], []).append(json.loads(r["ranking"]))
        k_of[r["task_id"]] = len(json.loads(r["completions"]))
    ws = [w for t, rs in by_task.items() if len(rs) >= 2 and (w := kendalls_w(rs, k_of[t])) is not None]
    flagged = [
        {
            "task_id": r["task_id"],
            "labeler": r["name"],
            "note": r["note"],
            "at": r["created_at"],
            "prompt": _preview(json.loads(r["prompt"])),
        }
        for r in c.execute(
            "SELECT r.task_id, l.name, r.note, r.created_at, t.prompt FROM rankings r "
            "JOIN labelers l ON l.id = r.labeler_id JOIN tasks t ON t.id = r.task_id "
            "WHERE r.flagged = 1 ORDER BY r.created_at DESC LIMIT 200"
        ).fetchall()
    ]
    return {
        "progress": {
            "tasks": n_tasks,
            "per_task": per_task,
            "target": n_tasks * per_task,
            "answered": done,
            "tasks_complete": complete,
            "skipped": c.execute("SELECT COUNT(*) FROM rankings WHERE skipped = 1").fetchone()[0],
            "open": c.execute("SELECT COUNT(*) FROM assignments WHERE status = 'open'").fetchone()[0],
        },
        "labelers": labelers,
        "agreement": {
            "kendalls_w_mean": round(sum(ws) / len(ws), 4) if ws else None,
            "tasks": len(ws),
            "kendalls_w_median": round(statistics.median(ws), 4) if ws else None,
        },
        "flagged": flagged,
    }


def _preview(prompt: Any, n: int = 200) -> str:
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return text if len(text) <= n else text[:n] + "…"
