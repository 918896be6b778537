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


def peak_rss_mib() -> float:
    """This process's own peak resident memory in MiB: Linux's VmHWM where there is one, else ``ru_maxrss``. On Linux
    ``ru_maxrss`` is not the worker's own: a child that subprocess starts (vfork + exec) carries its parent's peak in it
    (measured: the child of a parent that had touched 800 MiB reported 813 MiB there, 13 MiB as VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(result: dict) -> None:
    """In the worker: hand the measurements to the parent."""
    print(PREFIX + json.dumps(result), flush=True)


def run_worker(script: str | Path, spec: dict, cwd: Path, tail: int = 8, log: Path | None = None) -> dict:
    """In the parent: run ``script --worker SPEC`` and return the result it reported (``log``: where to keep the
    worker's whole output)."""
    proc = subprocess.run(
        [sys.executable, str(script), "--worker", json.dumps(spec)], capture_output=True, text=True, cwd=cwd
    )
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(PREFIX)), None)
    if proc.returncode != 0 or line is None:
        raise WorkerFailed("\n".join((proc.stderr or proc.stdout).strip().splitlines()[-tail:]))
    return json.loads(line[len(PREFIX) :])
