"""Benchmarks run each configuration in a subprocess of their own script (``--worker SPEC``), so each peak RSS
is that configuration's alone; the worker prints one ``RESULT {json}`` line, which the parent reads back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PREFIX = "RESULT "


class WorkerFailed(RuntimeError):
    """The worker exited with an error or printed no result; the message is the tail of its output."""


def report(result: dict) -> None:
    """In the worker: hand the measurements to the parent."""
    print(PREFIX + json.dumps(result), flush=True)


def run_worker(script: str | Path, spec: dict, cwd: Path, tail: int = 8, log: Path | None = None) -> dict:
    """In the parent: run ``script --worker SPEC`` and return the result it reported (``log``: where to keep the
    worker's whole output)."""
    proc = subprocess.run([sys.executable, str(script), "--worker", json.dumps(spec)], capture_output=True, text=True,
                          cwd=cwd)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(PREFIX)), None)
    if proc.returncode != 0 or line is None:
        raise WorkerFailed("\n".join((proc.stderr or proc.stdout).strip().splitlines()[-tail:]))
    return json.loads(line[len(PREFIX):])
