"""How each isolation is built: the command lines for bubblewrap and for unshare, the interpreter
the sandbox runs, and the privilege drop. ``aha.sandbox`` runs them; nothing here starts a process.

What a program sees under ``bwrap`` or ``unshare`` (both the same view)::

    /usr /bin /sbin /lib* (read-only)    /proc (its own pid namespace)    /dev/{null,zero,random,urandom}
    /sandbox  (tmpfs, the cwd)           /tmp (tmpfs)                     nothing else: no /etc, /work, /root

>>> bwrap_command(64, "/usr/bin/python3.11")[:3]            # doctest: +SKIP
['/usr/bin/bwrap', '--unshare-all', '--die-with-parent']
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

log = logging.getLogger(__name__)
_WARNED: list[bool] = []
SANDBOX_UID = 65534  # 'nobody': the host uid sandboxed programs run as when aha is root


class SandboxError(RuntimeError):
    """The requested isolation cannot work on this machine (one-line message naming the fix)."""


def sandbox_python() -> str:
    """A python3 the sandbox user may execute: this interpreter's base if world-readable, else /usr's."""
    candidates = [getattr(sys, "_base_executable", None) or sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]
    for path in candidates:
        real = os.path.realpath(path)
        if os.path.isfile(real) and (os.geteuid() != 0 or _world_reachable(real)):
            return real
    raise SandboxError("no python3 that the sandbox user (uid 65534) can run: install python3 under /usr")


def _world_reachable(path: str) -> bool:
    """Whether 'other' users may traverse every parent of ``path`` and read/execute it."""
    parts = path.split("/")
    for i in range(2, len(parts)):
        if not os.stat("/".join(parts[:i])).st_mode & 0o001:
            return False
    return os.stat(path).st_mode & 0o005 == 0o005


def drop_privileges() -> list[str]:
    """``setpriv`` to uid/gid 65534 when we are root (where setpriv exists), else nothing."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        if not _WARNED:
            _WARNED.append(True)
            log.warning("code sandbox: running as root without setpriv (util-linux): programs keep uid 0 in "
                        "their namespace, and root is exempt from max_processes (RLIMIT_NPROC)")
        return []
    return [setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups", "--"]


def _ro_paths(python: str) -> list[str]:
    """Host paths shown read-only: /usr, the merged-/usr entries, and the interpreter's prefix."""
    paths = ["/usr"] + [p for p in ("/bin", "/sbin", "/lib", "/lib32", "/lib64") if os.path.exists(p)]
    prefix = os.path.dirname(os.path.dirname(python))
    if not prefix.startswith("/usr/") and prefix != "/usr":
        paths.append(prefix)
    return paths


def bwrap_command(disk_mb: int, python: str, workdir: str = "") -> list[str]:
    size = str(int(disk_mb) << 20)
    cmd = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
           "--hostname", "sandbox", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
           "--setenv", "HOME", "/sandbox", "--setenv", "LANG", "C.UTF-8"]
    for path in _ro_paths(python):
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        else:
            cmd += ["--ro-bind", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/sandbox",
            "--size", size, "--tmpfs", "/tmp", "--chdir", "/sandbox"]
    return cmd


# The same view as bwrap's, built by hand: $1 = the new root (an empty dir), $2 = tmpfs size,
# $3 = "ro paths" separated by spaces, then the command. sh stays pid 1 (python as pid 1 would
# ignore SIGXCPU); when it exits, the kernel kills the rest of the pid namespace.
_UNSHARE_SCRIPT = r"""
set -e
R=$1; SIZE=$2; RO=$3; shift 3
mount -t tmpfs -o size=1m,mode=755 aha "$R"
for p in $RO; do
  if [ -L "$p" ]; then ln -s "$(readlink "$p")" "$R$p"; else
    mkdir -p "$R$p"; mount --rbind "$p" "$R$p"; mount -o remount,bind,ro "$R$p"; fi
done
mkdir -p "$R/proc" "$R/dev" "$R/sandbox" "$R/tmp"
mount -t proc proc "$R/proc"
for d in null zero random urandom; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
mount -t tmpfs -o "size=$SIZE" aha "$R/sandbox"
mount -t tmpfs -o "size=$SIZE" aha "$R/tmp"
chmod 1777 "$R/sandbox" "$R/tmp"
set +e; CHROOT=$(command -v chroot)
env -i PATH=/usr/bin:/bin HOME=/sandbox LANG=C.UTF-8 "$CHROOT" "$R" /bin/sh -c 'cd /sandbox && exec "$@"' sh "$@"
exit $?
"""


def unshare_command(disk_mb: int, python: str, workdir: str) -> list[str]:
    unshare = shutil.which("unshare") or "unshare"
    root = os.path.join(workdir, "root")
    os.mkdir(root, 0o755)
    return [unshare, "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount",
            "--ipc", "--uts", "/bin/sh", "-c", _UNSHARE_SCRIPT, "sh", root, str(int(disk_mb) << 20),
            " ".join(_ro_paths(python))]


BUILDERS = {"bwrap": bwrap_command, "unshare": unshare_command, "none": lambda disk_mb, python, workdir: []}
