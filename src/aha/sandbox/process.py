"""The processes behind :func:`aha.sandbox.run`: feeding and reading their pipes against a deadline and an
output cap, and killing the whole tree without ever signalling a stranger."""

from __future__ import annotations

import logging
import os
import select
import selectors
import signal
import subprocess
import time

log = logging.getLogger("aha.sandbox")

__all__ = ["close_fds", "communicate", "exited", "kill_tree", "leftover_processes"]


MAX_VERDICT = 1 << 16  # bytes of the checker's verdict kept


def close_fds(fds) -> None:
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def exited(proc: subprocess.Popen) -> bool:
    """Whether the process has exited, WITHOUT reaping it: its pid (and so its process group's id) stays ours."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def communicate(
    proc: subprocess.Popen, payload: bytes, limits, start: float, fds: dict | None = None, tests: bytes = b""
) -> tuple[bytes, bytes, bytes, str]:
    """Feed stdin (and ``fds['tests_w']``, closed once written), read stdout/stderr up to the cap (and
    ``fds['verdict_r']``), until exit, deadline ('timeout') or cap ('output_limit')."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None  # all pipes (run())
    fds = fds if fds is not None else {}
    verdict_fd, tests_fd = fds.get("verdict_r", -1), fds.get("tests_w", -1)
    chunks = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    verdict = bytearray()
    deadline = start + limits.timeout_s
    total, why, exited_at = 0, "", None
    with selectors.DefaultSelector() as sel:
        for stream in (proc.stdout, proc.stderr):
            sel.register(stream, selectors.EVENT_READ)
        if verdict_fd >= 0:
            sel.register(verdict_fd, selectors.EVENT_READ)
        stdin_fd = proc.stdin.fileno()
        pending = {stdin_fd: memoryview(payload)}
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
        if tests_fd >= 0:
            pending[tests_fd] = memoryview(tests)
            os.set_blocking(tests_fd, False)
            sel.register(tests_fd, selectors.EVENT_WRITE)
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                why = "timeout"
                break
            if exited_at is None and exited(proc):
                exited_at = now
            if exited_at is not None and now - exited_at > 0.5:  # something kept the pipes open
                break
            for key, _ in sel.select(timeout=min(0.1, deadline - now)):
                if key.fd in pending:
                    try:
                        pending[key.fd] = pending[key.fd][os.write(key.fd, pending[key.fd][: 1 << 16]) :]
                    except OSError:  # the sandbox closed its end (or died)
                        pending[key.fd] = pending[key.fd][:0]
                    if not pending[key.fd]:
                        sel.unregister(key.fd)
                        del pending[key.fd]
                        if key.fd == stdin_fd:
                            proc.stdin.close()
                        else:
                            os.close(fds.pop("tests_w"))
                    continue
                data = os.read(key.fd, 1 << 16)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                if key.fd == verdict_fd:
                    verdict += data[: max(0, MAX_VERDICT - len(verdict))]
                    continue
                total += len(data)
                buf = chunks[key.fd]
                buf += data[: max(0, limits.max_output_bytes - len(buf))]
                if total > limits.max_output_bytes:
                    why = "output_limit"
                    break
            if why:
                break
    if why == "" and not _wait_exit(proc, deadline):
        why = "timeout"
    return bytes(chunks[proc.stdout.fileno()]), bytes(chunks[proc.stderr.fileno()]), bytes(verdict), why


def _wait_exit(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait until the process exits (without reaping it) or the deadline passes; whether it exited. A pidfd wakes
    the wait at the exit itself; where there is none (Linux < 5.3), poll."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = -1
    try:
        while not exited(proc):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if pidfd >= 0:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(0.005, left))
        return True
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def kill_tree(proc: subprocess.Popen, tag: str) -> None:
    """SIGKILL the program's process group (in bwrap/unshare its pid namespace dies with it), then reap.

    The group is killed before the leader is reaped: until then its pid, the group's id, cannot be reused,
    so the kill cannot reach an unrelated process that took the number.
    """
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        assert stream is not None  # all three are pipes (run())
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
