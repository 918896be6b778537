"""Run untrusted Python programs (model output) in a sandbox, one process tree per program.

Each program runs as ``python3 -I`` inside, by order of preference (``isolation="auto"``):

- ``bwrap`` (bubblewrap): new user, pid, network, ipc, uts and mount namespaces. The filesystem is
  an empty root with ``/usr`` (and ``/bin``, ``/lib*`` or their merged-/usr links) read-only, a
  private ``/proc``, ``/dev/{null,zero,random,urandom}``, and two size-capped tmpfs: ``/sandbox``
  (the working directory) and ``/tmp``. Nothing else exists: not ``/work``, ``/root``, ``/home``,
  ``/etc``, the host's ``/tmp``, nor any checkpoint. The tmpfs vanish with the namespace.
- ``unshare`` (util-linux): the same namespaces and the same view, built by a short shell script
  (tmpfs root + read-only bind mounts + ``chroot``) where bubblewrap is not installed.
- ``none``: a plain child process in its own session with the rlimits only. Not a boundary: the
  network and every world-readable file are reachable, and a process that leaves the group with
  ``os.setsid()`` is found afterwards only by the tag in its argv (so not once it ``exec``s
  something else). ``auto`` falls back to it only where no namespaces are allowed, and warns once.

In every mode: rlimits for CPU seconds, address space, processes (``RLIMIT_NPROC``, counted per
user namespace, so per program), file size and core dumps; a wall-clock deadline and an output cap,
after which the whole tree is SIGKILLed. When aha runs as root the sandbox first drops to uid/gid
65534 (``setpriv``): root is exempt from ``RLIMIT_NPROC`` and from file permissions. The pid
namespace is what makes the kill total: when its init dies, the kernel kills everything in it, so a
program that calls ``os.setsid()`` and forks cannot outlive its deadline.

>>> r = run("print(sum(range(10)))")                                    # doctest: +SKIP
>>> r.status, r.exit_code, r.stdout                                     # doctest: +SKIP
('ok', 0, '45\\n')
>>> run("while True: pass", Limits(timeout_s=1)).status               # doctest: +SKIP
'timeout'
>>> [r.status for r in run_many(["1/0", "import os; os._exit(3)"])]   # doctest: +SKIP
['failed', 'failed']
"""

from __future__ import annotations

import logging
import math
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aha.sandbox.namespaces import BUILDERS, SANDBOX_UID, SandboxError, drop_privileges, sandbox_python

log = logging.getLogger(__name__)

__all__ = ["ISOLATIONS", "Limits", "Result", "SandboxError", "default_workers", "isolation_available",
           "leftover_processes", "resolve_isolation", "run", "run_many"]

ISOLATIONS = ("auto", "bwrap", "unshare", "none")
_START = b"\x00aha-sandbox-start\x00"  # the launcher writes it to stderr once its limits are set
_MEMORY = b"\x00aha-sandbox-memory\x00"  # ... and this when the program dies of MemoryError
_MAX_SOURCE = 4 << 20

# Runs inside the sandbox: argv = cpu_s memory_bytes nproc fsize_bytes tag; the source comes on stdin.
_LAUNCHER = r"""
import os, resource, sys
cpu, mem, nproc, fsize = (int(a) for a in sys.argv[1:5])
src = sys.stdin.buffer.read().decode("utf-8", "replace")
fd = os.open(os.devnull, os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
for res, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, mem), (resource.RLIMIT_NPROC, nproc),
                   (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(res, (value, value + 1 if res == resource.RLIMIT_CPU else value))
os.write(2, START)
sys.argv = ["main.py"]
try:
    exec(compile(src, "main.py", "exec"), {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__})
except MemoryError:
    os.write(2, MEMORY); os._exit(1)
except SystemExit:
    raise
except BaseException as exc:  # a traceback with the program's lines, not the launcher's (imported late: slow)
    import linecache, traceback
    linecache.cache["main.py"] = (len(src), None, src.splitlines(True), "main.py")
    traceback.print_exception(exc.with_traceback(exc.__traceback__.tb_next))
    sys.stdout.flush(); sys.stderr.flush(); os._exit(1)
""".replace("START", repr(_START)).replace("MEMORY", repr(_MEMORY))


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
        for name in ("timeout_s", "cpu_s", "memory_mb", "max_processes", "max_file_mb", "disk_mb",
                     "max_output_bytes"):
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
            _PROBED[isolation] = None if probe.ok else f"{isolation} cannot start a sandbox here: {probe.detail or probe.stderr.strip()[-200:]}"
    return _PROBED[isolation]


def resolve_isolation(isolation: str = "auto") -> str:
    """The isolation ``run`` will use: 'auto' → the first of bwrap, unshare that works, else 'none'."""
    if isolation not in ISOLATIONS:
        raise SandboxError(f"sandbox isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    if isolation != "auto":
        why = isolation_available(isolation)
        if why:
            raise SandboxError(why)
        return isolation
    for candidate in ("bwrap", "unshare"):
        if isolation_available(candidate) is None:
            return candidate
    if "warned-none" not in _PROBED:
        _PROBED["warned-none"] = None
        log.warning("code sandbox: neither bubblewrap nor unshare works here (%s; %s): programs run with "
                    "rlimits only; network and files are NOT hidden", _PROBED.get("bwrap"), _PROBED.get("unshare"))
    return "none"


# ─────────────────────────────── running one program ───────────────────────────────


def run(source: str, limits: Limits | None = None, isolation: str = "auto") -> Result:
    """Run ``source`` (Python) in a sandbox and say how it ended; never raises for the program's sake.

    ``isolation``: 'auto', 'bwrap', 'unshare' or 'none' (see the module docstring). A requested
    isolation that cannot work here gives ``status='error'`` with the reason in ``detail``.
    """
    try:
        mode = resolve_isolation(isolation)
    except SandboxError as exc:
        return Result("error", None, "", "", 0.0, isolation, detail=str(exc))
    return _run(source, limits or Limits(), mode)


def _run(source: str, limits: Limits, isolation: str) -> Result:
    start = time.monotonic()
    payload = source.encode("utf-8", "replace")
    if len(payload) > _MAX_SOURCE:
        return Result("error", None, "", "", 0.0, isolation, detail=f"program is {len(payload)} bytes (> {_MAX_SOURCE})")
    tag = f"aha-sandbox-{uuid.uuid4().hex[:12]}"
    workdir = tempfile.mkdtemp(prefix="aha-sandbox-")  # bwrap needs none; unshare's root, none's cwd
    try:
        os.chmod(workdir, 0o755)
        if isolation == "none" and os.geteuid() == 0:
            os.chown(workdir, SANDBOX_UID, SANDBOX_UID)
        python = sandbox_python()
        args = [str(math.ceil(limits.cpu_s)), str(int(limits.memory_mb) << 20), str(int(limits.max_processes)),
                str(int(limits.max_file_mb) << 20), tag]
        inner = [python, "-I", "-c", _LAUNCHER, *args]
        cmd = drop_privileges() + BUILDERS[isolation](limits.disk_mb, python, workdir) + inner
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        cwd = workdir if isolation == "none" else "/"
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=cwd, env=env, start_new_session=True, close_fds=True)
    except (OSError, SandboxError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        return Result("error", None, "", "", time.monotonic() - start, isolation, detail=f"cannot start: {exc}", tag=tag)
    try:
        out, err, why = _communicate(proc, payload, limits, start)
    except Exception as exc:  # a bug here must cost one program, never the training run
        log.warning("code sandbox: reading a program's output failed: %s: %s", type(exc).__name__, exc)
        out, err, why = b"", b"", f"error: {type(exc).__name__}: {exc}"
    finally:
        _kill_tree(proc, tag)
        shutil.rmtree(workdir, ignore_errors=True)  # (bwrap/unshare: the tmpfs lived in the namespace only)
    return _verdict(proc.returncode, out, err, why, limits, isolation, time.monotonic() - start, tag)


def _communicate(proc: subprocess.Popen, payload: bytes, limits: Limits, start: float) -> tuple[bytes, bytes, str]:
    """Feed stdin, read stdout/stderr up to the cap, until exit, deadline ('timeout') or cap ('output_limit')."""
    chunks = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    deadline = start + limits.timeout_s
    total, why, exited_at = 0, "", None
    with selectors.DefaultSelector() as sel:
        for stream in (proc.stdout, proc.stderr):
            sel.register(stream, selectors.EVENT_READ)
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
        pending = memoryview(payload)
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                why = "timeout"
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.5:  # something kept the pipes open
                break
            for key, _ in sel.select(timeout=min(0.1, deadline - now)):
                if key.fileobj is proc.stdin:
                    try:
                        pending = pending[os.write(key.fd, pending[: 1 << 16]):]
                    except (BrokenPipeError, OSError):
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, 1 << 16)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                total += len(data)
                buf = chunks[key.fd]
                buf += data[: max(0, limits.max_output_bytes - len(buf))]
                if total > limits.max_output_bytes:
                    why = "output_limit"
                    break
            if why:
                break
    if why == "" and proc.poll() is None:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            why = "timeout"
    return bytes(chunks[proc.stdout.fileno()]), bytes(chunks[proc.stderr.fileno()]), why


def _kill_tree(proc: subprocess.Popen, tag: str) -> None:
    """SIGKILL the program's process group (in bwrap/unshare its pid namespace dies with it) and reap."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        try:
            stream.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # cannot happen after SIGKILL short of a kernel hang
        log.warning("code sandbox: process %d survived SIGKILL for 5 s", proc.pid)
    # The pid namespace dies a moment after its init; in 'none' mode this is also what catches a
    # process that left the group with setsid() (it still carries the tag in its argv).
    deadline = time.monotonic() + 2.0
    while (left := leftover_processes(tag)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005)


def leftover_processes(tag: str) -> list[int]:
    """Pids of live processes whose argv holds ``tag`` (every sandboxed process does, forks included)."""
    needle, found = tag.encode(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


def _verdict(rc: int | None, out: bytes, err: bytes, why: str, limits: Limits, isolation: str,
             seconds: float, tag: str) -> Result:
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
        detail = f"killed by {signal.Signals(signo).name}" if signo in signal.valid_signals() and signo else f"exit code {rc}"
        if signo == signal.SIGXFSZ:
            detail += f" (a file > {limits.max_file_mb} MiB)"
    return Result(status, rc, stdout, stderr, seconds, isolation, detail=detail, tag=tag)


# ─────────────────────────────── many programs ───────────────────────────────


def default_workers() -> int:
    """The cores this process may use (its CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_many(sources: list[str], limits: Limits | None = None, isolation: str = "auto",
             workers: int | None = None) -> list[Result]:
    """Run every program, ``workers`` at a time (default: the cores we may use); results in order.

    Threads only wait on child processes here, so the GIL is not the bound; each program is
    bounded by its own wall-clock limit, so the whole call is bounded too.
    """
    if not sources:
        return []
    try:
        mode = resolve_isolation(isolation)
    except SandboxError as exc:
        return [Result("error", None, "", "", 0.0, isolation, detail=str(exc)) for _ in sources]
    limits = limits or Limits()
    n = max(1, min(int(workers or default_workers()), len(sources)))
    if n == 1:
        return [_run(s, limits, mode) for s in sources]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="aha-sandbox") as pool:
        return list(pool.map(lambda s: _run(s, limits, mode), sources))
