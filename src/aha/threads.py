"""How many CPU threads a run's tensor maths uses, and how its idle OpenMP threads wait.

torch's default is one thread per core, and its OpenMP threads spin while they wait for work. That is fastest on an
idle machine and very slow on a shared one: two runs with two threads each on two cores spend their time spinning
in barriers that wait for a descheduled thread (``benchmarks/two_runs.py`` measures it). So aha

- splits the cores it may use (CPU affinity, a cgroup CPU quota, an ``OMP_NUM_THREADS`` cap) evenly between the aha
  runs of this user on the machine (each run registers its pid in a temporary directory while it runs), and looks
  again every few seconds, so a run gives up threads when another starts and takes them back when it ends;
- lets idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``) where the machine is busy as the run
  starts — another aha run is registered, or other work keeps half a core or more busy — unless a policy is set
  already; the ``aha`` command and ``aha.train`` decide where torch has not been loaded yet (OpenMP reads it once, as
  torch loads). On an idle machine spinning is faster (the tiny model's SFT: 23 s spinning, 32 s passive, measured),
  and a run that later shares the cores with another aha run drops to one thread, which has nothing to spin for.

``AHA_THREADS=N`` (or ``train.threads: N``) fixes the count; ``AHA_THREADS=off`` leaves threads and wait policy to
torch, as aha did before.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

from aha.errors import AhaError

ENV = "AHA_THREADS"
RECHECK_S = 2.0  # how often a running run looks for other runs


class ThreadsError(AhaError, ValueError):
    """AHA_THREADS is not a thread count, 'auto' or 'off'."""


def env_setting() -> int | str:
    """``AHA_THREADS`` as a positive count, ``'auto'`` (unset or empty) or ``'off'``."""
    raw = os.environ.get(ENV, "").strip().lower()
    if raw in ("", "auto", "0"):
        return "auto"
    if raw == "off":
        return "off"
    if raw.isdigit():
        return int(raw)
    raise ThreadsError(f"{ENV}={os.environ[ENV]!r}: expected a thread count (e.g. 1), 'auto' or 'off'")


def set_wait_policy() -> None:
    """On a busy machine idle OpenMP threads sleep rather than spin: ``OMP_WAIT_POLICY=PASSIVE``, which OpenMP reads
    when torch loads, so only while torch is not loaded yet; not where the user set a policy, nor with
    ``AHA_THREADS=off``. Busy: another aha run is registered, or other work keeps ≥ 0.5 cores busy (:func:`busy_cores`).
    """
    if "torch" in sys.modules or os.environ.get(ENV, "").strip().lower() == "off" or "OMP_WAIT_POLICY" in os.environ:
        return
    if other_runs() > 0 or (busy_cores() or 0.0) >= 0.5:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def busy_cores(interval: float = 0.1, stat: Path = Path("/proc/stat")) -> float | None:
    """How many cores of the machine other work kept busy over the next ``interval`` seconds (this process sleeps
    meanwhile), from ``/proc/stat``; None where it cannot be read."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in stat.read_text().splitlines()[0].split()[1:9]]  # user … steal (guest is in user)
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))


# ----------------------------------------------------------------------------- what this process may use


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), None if
    there is none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores() -> tuple[int, str]:
    """The cores this process may run on, and why (``'2 cores'``, ``'1.5-core cgroup quota'``, ``OMP_NUM_THREADS=1``)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores, why = affinity, f"{affinity} core{'s' * (affinity != 1)}"
    quota = cgroup_cpu_limit()
    if quota is not None and math.ceil(quota) < cores:
        cores, why = max(1, math.ceil(quota)), f"{quota:g}-core cgroup quota"
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and 0 < int(omp) < cores:
        cores, why = int(omp), f"OMP_NUM_THREADS={omp}"
    return cores, why


def choose_threads(cores: int, other_runs: int) -> int:
    """An even share of ``cores`` between this run and ``other_runs``, at least one thread.

    >>> choose_threads(2, 0), choose_threads(2, 1), choose_threads(8, 2), choose_threads(2, 5)
    (2, 1, 2, 1)
    """
    return max(1, cores // (1 + other_runs))


# ----------------------------------------------------------------------------- the registry of running aha runs


def registry_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return Path(tempfile.gettempdir()) / f"aha-runs-{uid}"


def _start_time(pid: int) -> str:
    """The process's start time (clock ticks since boot) where Linux says it: a reused pid has another one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not started or _start_time(pid) == started


def other_runs(folder: Path | None = None, me: int | None = None) -> int:
    """How many other live processes are registered in ``folder``; the entries of dead ones are removed."""
    if os.name == "nt":  # (os.kill(pid, 0) would end the process there: no registry on Windows)
        return 0
    folder = folder or registry_dir()
    me = os.getpid() if me is None else me
    count = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            started = entry.read_text().strip()
        except OSError:
            continue
        if _alive(int(entry.name), started):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return count


def register(folder: Path | None = None) -> None:
    """Enter this process in the registry until it exits."""
    if os.name == "nt":
        return
    folder = folder or registry_dir()
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        entry = folder / str(os.getpid())
        entry.write_text(_start_time(os.getpid()))
    except OSError:  # a read-only temp dir: this run is not counted by others, nothing worse
        return
    atexit.register(entry.unlink, missing_ok=True)


# ----------------------------------------------------------------------------- the policy in a run


class _Policy:
    fixed: int | None = None  # a count the user set
    threads = 0
    last_check = 0.0


_policy: _Policy | None = None


def use_threads(configured: int = 0) -> None:
    """Set torch's thread count for this run (once per process; later calls only recheck): ``AHA_THREADS``, else
    ``configured`` (``train.threads``; 0 = auto), else an even share of the usable cores. Prints the choice."""
    global _policy
    if _policy is not None:
        refresh()
        return
    setting = env_setting()
    if setting == "off":
        return
    import torch

    _policy = _Policy()
    register()
    if setting != "auto" or configured:
        _policy.fixed = _policy.threads = (
            cast(int, setting) if setting != "auto" else configured
        )  # "off" returned above
        why = f"{ENV}={setting}" if setting != "auto" else f"train.threads={configured}"
    else:
        cores, why = usable_cores()
        others = other_runs()
        _policy.threads = choose_threads(cores, others)
        why += f", {others} other aha run{'s' * (others != 1)}" if others else ", no other aha run"
    _policy.last_check = time.monotonic()
    torch.set_num_threads(_policy.threads)
    wait = os.environ.get("OMP_WAIT_POLICY", "torch's default").lower()
    print(f"threads: {_policy.threads} ({why}; idle threads wait: {wait}; set {ENV}=N to choose)", file=sys.stderr)


def refresh() -> None:
    """Recheck the share (every few seconds at most): another run started or ended. Call it between steps."""
    if _policy is None or _policy.fixed is not None or time.monotonic() - _policy.last_check < RECHECK_S:
        return
    _policy.last_check = time.monotonic()
    cores, _ = usable_cores()
    others = other_runs()
    threads = choose_threads(cores, others)
    if threads != _policy.threads:
        import torch
        from tqdm.auto import tqdm

        torch.set_num_threads(threads)
        tqdm.write(
            f"threads: {_policy.threads} → {threads} ({others} other aha run{'s' * (others != 1)})", file=sys.stderr
        )
        _policy.threads = threads
