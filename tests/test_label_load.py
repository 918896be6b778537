"""Load on a real server: 20 concurrent labelers × 50 rankings over HTTP on 127.0.0.1, the server ``kill -9``'d
mid-run and restarted on the same database. Counted in SQLite afterwards: 0 lost (every 201 is stored),
0 duplicated, no task over-assigned. Prints p50/p95 latency (run with -s to see it; on a shared machine the
numbers are indicative only)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from aha.label.store import Store

LABELERS, PER_LABELER, PER_TASK, K = 20, 50, 2, 4
TASKS = 600  # 1200 slots for 1000 rankings: room for the few a kill commits without acknowledging
KILL_AFTER = 400  # acknowledged rankings before the kill -9
SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int, probe_token: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from aha.cli import app; app()",
            "label",
            "serve",
            "--db",
            str(db),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            if (
                httpx.get(
                    f"http://127.0.0.1:{port}/api/me", headers={"Authorization": f"Bearer {probe_token}"}, timeout=1
                ).status_code
                == 200
            ):
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not come up in 30 s")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def test_20_labelers_x_50_rankings_with_a_kill_9(tmp_path):
    db = tmp_path / "rankings.sqlite"
    store = Store(db)
    store.set_per_task(PER_TASK)
    store.add_tasks([{"prompt": f"p{i}", "completions": [f"c{i}.{j}" for j in range(K)]} for i in range(TASKS)])
    tokens = {f"labeler{i:02d}": store.add_labeler(f"labeler{i:02d}") for i in range(LABELERS)}
    store.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = {"proc": start_server(db, port, next(iter(tokens.values())))}

    acked: list[tuple[int, str, list]] = []  # (task_id, labeler, ranking) answered 201
    lat_next, lat_post, errors, transport_errors = [], [], [], [0]
    lock, killed = threading.Lock(), threading.Event()
    kill_info = {}
    t_start = time.perf_counter()

    def labeler(name: str, token: str):
        rng = random.Random(name)
        mine = 0
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=15) as client:
            while mine < PER_LABELER and time.perf_counter() - t_start < 90:
                try:
                    t0 = time.perf_counter()
                    resp = client.get("/api/next")
                    lat_next.append(time.perf_counter() - t0)
                    if resp.status_code == 204:
                        errors.append(f"{name}: 204 with {mine} done")
                        return
                    task_id = resp.json()["task_id"]
                    order = rng.sample(range(K), K)
                    ranking = [[order[0], order[1]], *order[2:]] if rng.random() < 0.3 else order  # some ties
                    t0 = time.perf_counter()
                    resp = client.post("/api/rankings", json={"task_id": task_id, "ranking": ranking})
                    lat_post.append(time.perf_counter() - t0)
                except httpx.TransportError:  # the server is down (kill -9): try again until it is back
                    with lock:
                        transport_errors[0] += 1
                    time.sleep(0.05)
                    continue
                if resp.status_code == 201:
                    with lock:
                        acked.append((task_id, name, ranking))
                        n = len(acked)
                    mine += 1
                    if n == KILL_AFTER and not killed.is_set():
                        killed.set()
                elif resp.status_code != 409:  # 409: stored by the killed server, its 201 lost: move on
                    errors.append(f"{name}: {resp.status_code} {resp.text}")

    def killer():
        killed.wait(60)
        proc = server["proc"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_info["acked_at_kill"] = len(acked)
        t0 = time.perf_counter()
        server["proc"] = start_server(db, port, next(iter(tokens.values())))
        kill_info["restart_s"] = time.perf_counter() - t0

    threads = [threading.Thread(target=labeler, args=item) for item in tokens.items()]
    kill_thread = threading.Thread(target=killer)
    kill_thread.start()
    [t.start() for t in threads]
    [t.join() for t in threads]
    kill_thread.join()
    wall = time.perf_counter() - t_start
    server["proc"].send_signal(signal.SIGTERM)
    server["proc"].wait(10)

    # ------------------------------------------------------------------ count it in the database
    c = sqlite3.connect(db)
    stored = {
        (t, n): json.loads(r)
        for t, n, r in c.execute(
            "SELECT r.task_id, l.name, r.ranking FROM rankings r JOIN labelers l ON l.id = r.labeler_id"
        )
    }
    lost = [(t, n) for t, n, _ in acked if (t, n) not in stored]
    wrong = [
        (t, n)
        for t, n, r in acked
        if (t, n) in stored and stored[(t, n)] != [sorted(x) if isinstance(x, list) else [x] for x in r]
    ]
    duplicated = c.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM rankings GROUP BY task_id, labeler_id HAVING COUNT(*) > 1)"
    ).fetchone()[0]
    over = c.execute(
        "SELECT COUNT(*) FROM (SELECT task_id FROM assignments WHERE status != 'skipped' "
        "GROUP BY task_id HAVING COUNT(*) > ?)",
        (PER_TASK,),
    ).fetchone()[0]
    over_ranked = c.execute(
        "SELECT COUNT(*) FROM (SELECT task_id FROM rankings GROUP BY task_id HAVING COUNT(*) > ?)", (PER_TASK,)
    ).fetchone()[0]
    drift = c.execute(
        "SELECT COUNT(*) FROM tasks t WHERE active != (SELECT COUNT(*) FROM assignments a "
        "WHERE a.task_id = t.id AND a.status != 'skipped')"
    ).fetchone()[0]
    total = c.execute("SELECT COUNT(*) FROM rankings").fetchone()[0]
    c.close()

    print(
        f"\n[load] {LABELERS} labelers × {PER_LABELER} rankings on 127.0.0.1 in {wall:.1f} s "
        f"(shared 2-core machine: indicative only)"
    )
    print(
        f"[load] GET /api/next      n={len(lat_next)} p50={pct(lat_next, 0.5):.1f} ms p95={pct(lat_next, 0.95):.1f} ms"
    )
    print(
        f"[load] POST /api/rankings n={len(lat_post)} p50={pct(lat_post, 0.5):.1f} ms p95={pct(lat_post, 0.95):.1f} ms"
    )
    print(
        f"[load] kill -9 after {kill_info.get('acked_at_kill')} acknowledged; restarted in "
        f"{kill_info.get('restart_s', float('nan')):.1f} s; {transport_errors[0]} requests failed meanwhile"
    )
    print(
        f"[load] acknowledged {len(acked)}, stored {total} (stored without an ack: {total - len(acked)}); lost "
        f"{len(lost)}, wrong {len(wrong)}, duplicated {duplicated}, over-assigned {over}, over-ranked {over_ranked}"
    )

    assert errors == []
    assert kill_info.get("acked_at_kill", 0) >= KILL_AFTER and transport_errors[0] > 0  # the kill happened mid-run
    assert len(acked) == LABELERS * PER_LABELER
    assert lost == [] and wrong == [] and duplicated == 0 and over == 0 and over_ranked == 0 and drift == 0
    assert len(acked) <= total <= len(acked) + LABELERS  # at most one unacknowledged commit per labeler
