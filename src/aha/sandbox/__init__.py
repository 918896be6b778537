"""Run untrusted Python programs (model output) in a sandbox, one process tree per program.

Each program runs as ``python3 -I`` inside, by order of preference (``isolation="auto"``):

- ``bwrap`` (bubblewrap): new user, pid, network, ipc, uts and mount namespaces, every capability dropped,
  no nested user namespaces (``--disable-userns``), death with its parent. The filesystem is a read-only
  empty root with ``/usr`` (and ``/bin``, ``/lib*`` or their merged-/usr links) read-only, a private ``/proc``,
  ``/dev/{null,zero,random,urandom}``, and three tmpfs capped at ``disk_mb`` each: ``/sandbox`` (the working
  directory), ``/tmp`` and ``/dev/shm``. Nothing else exists: not ``/work``, ``/root``, ``/home``, ``/etc``,
  the host's ``/tmp``, nor any checkpoint. The tmpfs vanish with the namespace.
- ``unshare`` (util-linux): the same namespaces and view, built by a short shell script that pivots into the
  new root and detaches the old one (no ``/proc/<pid>/root`` leads back), then runs the program as uid 65534
  of a nested user namespace capped at one level: no capabilities, no mounts, no further user namespaces.
- ``none``: a plain child process in its own session with the rlimits only. Not a boundary: the network
  and every world-readable file are reachable. Only when asked for by name, with a warning; ``auto``
  never falls back to it: where neither bwrap nor unshare works, it raises :class:`SandboxError` naming
  what to install.

In every mode: rlimits for CPU seconds, address space, processes (``RLIMIT_NPROC``, counted per
user namespace, so per program), file size and core dumps; a wall-clock deadline and an output cap,
after which the whole tree is SIGKILLed. When aha runs as root the sandbox first drops to uid/gid
65534 with no groups (Python's own setuid before exec). The pid namespace is what makes the kill total:
when its init dies, the kernel kills everything in it, so a program that calls ``os.setsid()`` and forks
cannot outlive its deadline, nor a killed trainer (bwrap ``--die-with-parent``; unshare under
``setpriv --pdeathsig``; ``none``: the launcher's own parent-death signal).

What rlimits cannot bound (no cgroup is used): memory and CPU are per process, so a program may hold up to
``max_processes`` × ``memory_mb`` of address space, plus up to 3 × ``disk_mb`` of tmpfs, for at most
``timeout_s`` seconds; ``workers`` programs run at once.

With ``tests``, the verdict is unforgeable by the program: see :mod:`aha.sandbox.launcher`.

>>> r = run("print(sum(range(10)))")                                    # doctest: +SKIP
>>> r.status, r.exit_code, r.stdout                                     # doctest: +SKIP
('ok', 0, '45\\n')
>>> run("while True: pass", Limits(timeout_s=1)).status               # doctest: +SKIP
'timeout'
>>> [r.status for r in run_many(["1/0", "import os; os._exit(3)"])]   # doctest: +SKIP
['failed', 'failed']
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aha.sandbox.namespaces import (
    BUILDERS,
    SANDBOX_UID,
    SandboxError,
    drop_privileges,
    sandbox_python,
)
from aha.sandbox.process import close_fds, communicate, kill_tree, leftover_processes

log = logging.getLogger(__name__)

__all__ = [
    "ISOLATIONS",
    "Limits",
    "Result",
    "SandboxError",
    "default_workers",
    "isolation_available",
    "leftover_processes",
    "resolve_isolation",
    "run",
    "run_many",
    "set_default_workers",
]

ISOLATIONS = ("auto", "bwrap", "unshare", "none")
_START = b"\x00aha-sandbox-start\x00"  # the launcher writes it to stderr once its limits are set
_MEMORY = b"\x00aha-sandbox-memory\x00"  # ... and this when the program dies of MemoryError
_MAX_SOURCE = 4 << 20

# Runs inside the sandbox (its source via ``-c``): argv = cpu_s memory_bytes nproc fsize_bytes tag verdict_fd
# pdeathsig; stdin = the program's length, the program, then the tests. See aha.sandbox.launcher.
_LAUNCHER = (Path(__file__).with_name("launcher.py")).read_text(encoding="utf-8")
# the launcher compiled once by the sandbox's own interpreter (its bytecode format), then passed as marshalled code:
# compiling its source at every start cost ~7 ms a program
_BOOT = "import marshal,sys;exec(marshal.loads(bytes.fromhex(sys.argv.pop(1))))"
_COMPILED: dict[str, str] = {}


def _launcher_argv(python: str) -> list[str]:
    """``-c`` and what makes the launcher run: its bytecode where the sandbox's interpreter compiled it, else its source."""
    if python not in _COMPILED:
        compile_it = (
            "import marshal,sys;sys.stdout.write(marshal.dumps(compile(sys.stdin.read(),'launcher.py','exec')).hex())"
        )
        try:
            done = subprocess.run([python, "-I", "-c", compile_it], input=_LAUNCHER, capture_output=True, text=True,
                                  timeout=60, check=True)  # fmt: skip
            _COMPILED[python] = done.stdout
        except (OSError, subprocess.SubprocessError):
            _COMPILED[python] = ""
    code = _COMPILED[python]
    return ["-c", _BOOT, code] if code else ["-c", _LAUNCHER]


@dataclass(frozen=True)
class Limits:
    """What one program may use. ``cpu_s`` and ``timeout_s`` are seconds; sizes in MiB or bytes."""

    timeout_s: float = 10.0  # wall clock, from start to SIGKILL of the whole tree
    cpu_s: float = 5.0  # RLIMIT_CPU per process (SIGXCPU, then SIGKILL one second later)
    memory_mb: int = 512  # RLIMIT_AS per process (MemoryError in Python)
    max_processes: int = 32  # RLIMIT_NPROC: processes + threads in the sandbox (fork bombs)
    max_file_mb: int = 16  # RLIMIT_FSIZE: largest file it may write (SIGXFSZ)
    disk_mb: int = 64  # size of each tmpfs (/sandbox, /tmp) in bwrap/unshare mode
    max_output_bytes: int = 1 << 16  # stdout + stderr together; more → killed, 'output_limit'

    def __post_init__(self):
        for name in ("timeout_s", "cpu_s", "memory_mb", "max_processes", "max_file_mb", "disk_mb", "max_output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"sandbox limit {name} must be a positive number, got {value!r}")


@dataclass
class Result:
    """How one program ended.

    ``status``: ``ok`` (exit 0), ``failed`` (non-zero exit or a signal), ``timeout`` (wall clock or
    CPU time), ``memory`` (MemoryError or killed by the kernel for memory), ``output_limit``, or
    ``error`` (the sandbox itself could not run it: ``detail`` says why).
    """

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: str
    detail: str = ""
    tag: str = field(default="", repr=False)  # in every sandboxed process's argv (tests look for leftovers)
    checks: dict | None = None  # with tests: the checker's verdict (see aha.sandbox.launcher), read from its own pipe

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ─────────────────────────────── what this machine allows ───────────────────────────────

_PROBED: dict[str, str | None] = {}  # isolation → None (works) or why not


def isolation_available(isolation: str) -> str | None:
    """None when ``isolation`` works here, else one line saying why not (probed once, cached)."""
    if isolation == "none":
        return None
    if isolation not in _PROBED:
        if isolation == "bwrap" and shutil.which("bwrap") is None:
            _PROBED[isolation] = "bubblewrap is not installed (apt-get install bubblewrap)"
        elif isolation == "unshare" and shutil.which("unshare") is None:
            _PROBED[isolation] = "util-linux's unshare is not installed"
        else:
            probe = _run("import sys; sys.exit(0)", Limits(timeout_s=20), isolation)
            _PROBED[isolation] = (
                None
                if probe.ok
                else f"{isolation} cannot start a sandbox here: {probe.detail or probe.stderr.strip()[-200:]}"
            )
    return _PROBED[isolation]


def resolve_isolation(isolation: str = "auto") -> str:
    """The isolation ``run`` will use: 'auto' → the first of bwrap, unshare that works, else SandboxError.

    'auto' never runs a program unisolated; 'none' runs only when asked for by name, with a warning.
    """
    if isolation not in ISOLATIONS:
        raise SandboxError(f"sandbox isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    if isolation == "none":
        if "warned-none" not in _PROBED:
            _PROBED["warned-none"] = None
            log.warning(
                "code sandbox: isolation 'none' was asked for: programs run with rlimits only, and see "
                "this machine's network and files. Use it only for programs you trust."
            )
        return "none"
    if isolation != "auto":
        why = isolation_available(isolation)
        if why:
            raise SandboxError(why)
        return isolation
    for candidate in ("bwrap", "unshare"):
        if isolation_available(candidate) is None:
            return candidate
    raise SandboxError(
        f"no code sandbox works on this machine (bwrap: {_PROBED.get('bwrap')}; unshare: "
        f"{_PROBED.get('unshare')}): install bubblewrap (apt-get install bubblewrap) where user "
        "namespaces are allowed; isolation: none runs programs unisolated, only if named"
    )


# ─────────────────────────────── running one program ───────────────────────────────


def run(source: str, limits: Limits | None = None, isolation: str = "auto", tests: str | None = None) -> Result:
    """Run ``source`` (Python) in a sandbox and say how it ended; never raises for the program's sake.

    ``isolation``: 'auto', 'bwrap', 'unshare' or 'none' (see the module docstring). A requested
    isolation that cannot work here gives ``status='error'`` with the reason in ``detail``. With ``tests``
    (Python source), they run against the program's names in a process of their own and ``Result.checks``
    holds the verdict: ``{"ran", "finished", "passed", "error", "program_exit"}`` (see aha.sandbox.launcher).
    """
    try:
        mode = resolve_isolation(isolation)
    except SandboxError as exc:
        return Result("error", None, "", "", 0.0, isolation, detail=str(exc))
    return _run(source, limits or Limits(), mode, tests)


def _run(source: str, limits: Limits, isolation: str, tests: str | None = None) -> Result:
    start = time.monotonic()
    payload, test_bytes = source.encode("utf-8", "replace"), (tests or "").encode("utf-8", "replace")
    if len(payload) + len(test_bytes) > _MAX_SOURCE:
        return Result(
            "error",
            None,
            "",
            "",
            0.0,
            isolation,
            detail=f"program and tests are {len(payload) + len(test_bytes)} bytes (> {_MAX_SOURCE})",
        )
    tag = f"aha-sandbox-{uuid.uuid4().hex[:12]}"
    workdir = tempfile.mkdtemp(prefix="aha-sandbox-")  # bwrap needs none; unshare's root, none's cwd
    fds = {"verdict_r": -1, "verdict_w": -1, "tests_r": -1, "tests_w": -1}
    try:
        os.chmod(workdir, 0o755)
        if isolation == "none" and os.geteuid() == 0:
            os.chown(workdir, SANDBOX_UID, SANDBOX_UID)
        if tests is not None:  # the verdict and the tests travel on pipes of their own, never stdin/stdout
            fds["verdict_r"], fds["verdict_w"] = os.pipe()
            fds["tests_r"], fds["tests_w"] = os.pipe()
        python = sandbox_python()
        prefix, start_as, guard_itself = drop_privileges()
        args = [
            str(math.ceil(limits.cpu_s)),
            str(int(limits.memory_mb) << 20),
            str(int(limits.max_processes)),
            str(int(limits.max_file_mb) << 20),
            tag,
            str(fds["verdict_w"]),
            str(fds["tests_r"]),
            str(int(isolation == "none" and guard_itself)),
        ]
        inner = [python, "-I", *_launcher_argv(python), *args]
        passed = tuple(fds[k] for k in ("verdict_w", "tests_r") if fds[k] >= 0)
        cmd = prefix + BUILDERS[isolation](limits.disk_mb, python, workdir, passed) + inner
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        cwd = workdir if isolation == "none" else "/"
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
            pass_fds=passed,
            **start_as,
        )
    except (OSError, SandboxError) as exc:
        close_fds(fds.values())
        shutil.rmtree(workdir, ignore_errors=True)
        return Result(
            "error", None, "", "", time.monotonic() - start, isolation, detail=f"cannot start: {exc}", tag=tag
        )
    close_fds([fds.pop("verdict_w"), fds.pop("tests_r")])  # only the sandbox holds these ends now
    try:
        out, err, verdict, why = communicate(proc, payload, limits, start, fds, test_bytes)
    except Exception as exc:  # a bug here must cost one program, never the training run
        log.warning("code sandbox: reading a program's output failed: %s: %s", type(exc).__name__, exc)
        out, err, verdict, why = b"", b"", b"", f"error: {type(exc).__name__}: {exc}"
    finally:
        kill_tree(proc, tag)
        close_fds(fds.values())
        shutil.rmtree(workdir, ignore_errors=True)  # (bwrap/unshare: the tmpfs lived in the namespace only)
    result = _verdict(proc.returncode, out, err, why, limits, isolation, time.monotonic() - start, tag)
    if tests is not None:
        result.checks = _checks(verdict)
    return result


def _checks(data: bytes) -> dict | None:
    """The checker's verdict, or None when it wrote none (it was killed, or something else wrote garbage)."""
    try:
        checks = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return checks if isinstance(checks, dict) else None


def _verdict(
    rc: int | None, out: bytes, err: bytes, why: str, limits: Limits, isolation: str, seconds: float, tag: str
) -> Result:
    started = _START in err
    memory = _MEMORY in err
    err = err.replace(_START, b"").replace(_MEMORY, b"")
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    signo = -rc if rc is not None and rc < 0 else (rc - 128 if rc is not None and 128 < rc < 160 else 0)
    if why.startswith("error"):
        status, detail = "error", why
    elif why == "timeout":
        status, detail = "timeout", f"wall clock > {limits.timeout_s:g} s"
    elif why == "output_limit":
        status, detail = "output_limit", f"output > {limits.max_output_bytes} bytes"
    elif not started:
        last = (stderr.strip().splitlines() or [f"exit code {rc}"])[-1]
        status, detail = "error", f"sandbox did not start: {last[:200]}"
    elif memory or (signo == signal.SIGKILL and "MemoryError" in stderr):
        status, detail = "memory", f"address space > {limits.memory_mb} MiB"
    elif signo == signal.SIGXCPU or (signo == signal.SIGKILL and seconds >= limits.cpu_s):
        status, detail = "timeout", f"CPU time > {limits.cpu_s:g} s"
    elif rc == 0:
        status, detail = "ok", ""
    else:
        status = "failed"
        detail = (
            f"killed by {signal.Signals(signo).name}"
            if signo in signal.valid_signals() and signo
            else f"exit code {rc}"
        )
        if signo == signal.SIGXFSZ:
            detail += f" (a file > {limits.max_file_mb} MiB)"
    return Result(status, rc, stdout, stderr, seconds, isolation, detail=detail, tag=tag)


# ─────────────────────────────── many programs ───────────────────────────────


_WORKERS: list[int] = []  # set_default_workers: a process's share of the cores (a Ray rollout worker's)


def set_default_workers(n: int | None) -> None:
    """Programs run at once by default in this process: ``n`` (its share of the cores), or None for its affinity."""
    _WORKERS[:] = [max(1, int(n))] if n else []


def default_workers() -> int:
    """The cores this process may use: its share if :func:`set_default_workers` set one, else its CPU affinity."""
    if _WORKERS:
        return _WORKERS[0]
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_many(
    sources: list[str],
    limits: Limits | None = None,
    isolation: str = "auto",
    workers: int | None = None,
    tests: list[str | None] | None = None,
) -> list[Result]:
    """Run every program (with its ``tests``, if given: see :func:`run`), ``workers`` at a time (default:
    the cores we may use); results in order.

    Threads only wait on child processes here, so the GIL is not the bound; each program is
    bounded by its own wall-clock limit, so the whole call is bounded too.
    """
    if not sources:
        return []
    if tests is not None and len(tests) != len(sources):
        raise ValueError(f"run_many got {len(tests)} tests for {len(sources)} programs")
    try:
        mode = resolve_isolation(isolation)
    except SandboxError as exc:
        return [Result("error", None, "", "", 0.0, isolation, detail=str(exc)) for _ in sources]
    limits = limits or Limits()
    jobs = list(zip(sources, tests if tests is not None else [None] * len(sources)))
    n = max(1, min(int(workers or default_workers()), len(sources)))
    if n == 1:
        return [_run(s, limits, mode, t) for s, t in jobs]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="aha-sandbox") as pool:
        return list(pool.map(lambda job: _run(job[0], limits, mode, job[1]), jobs))
