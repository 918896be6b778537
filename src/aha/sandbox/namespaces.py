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

from aha.errors import AhaError

log = logging.getLogger(__name__)
_WARNED: list[bool] = []
SANDBOX_UID = 65534  # 'nobody': the host uid sandboxed programs run as when aha is root


class SandboxError(AhaError, RuntimeError):
    """The requested isolation cannot work on this machine (one-line message naming the fix)."""


def sandbox_python() -> str:
    """A python3 the sandbox user may execute: this interpreter's base if world-readable, else /usr's."""
    candidates = [
        getattr(sys, "_base_executable", None) or sys.executable,
        "/usr/bin/python3",
        "/usr/local/bin/python3",
    ]
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


def drop_privileges() -> tuple[list[str], dict, bool]:
    """How the sandbox starts: ``(command prefix, subprocess.Popen arguments, launcher_guards_itself)``.

    With util-linux's ``setpriv``: ``setpriv [--reuid/--regid 65534 --clear-groups] --pdeathsig KILL --`` (when aha is
    root, the sandbox runs as uid/gid 65534 with no groups; it dies with the thread that started it). Without it:
    Python's own setuid before exec (``user``/``group``/``extra_groups``, when root; Popen then forks instead of using
    vfork, ~2 ms more a program here and more in a large trainer) and the launcher sets its own parent-death signal.
    """
    setpriv = shutil.which("setpriv")
    root = os.geteuid() == 0
    if setpriv is not None:
        ids = [f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups"] if root else []
        return [setpriv, *ids, "--pdeathsig", "KILL", "--"], {}, False
    kwargs = {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []} if root else {}
    return [], kwargs, True


def _ro_paths(python: str) -> list[str]:
    """Host paths shown read-only: /usr, the merged-/usr entries, and the interpreter's prefix."""
    paths = ["/usr"] + [p for p in ("/bin", "/sbin", "/lib", "/lib32", "/lib64") if os.path.exists(p)]
    prefix = os.path.dirname(os.path.dirname(python))
    if not prefix.startswith("/usr/") and prefix != "/usr":
        paths.append(prefix)
    return paths


def bwrap_command(disk_mb: int, python: str, workdir: str = "") -> list[str]:
    """bubblewrap: every namespace, no capabilities, no nested user namespaces, a read-only root whose only
    writable places are three size-capped tmpfs (/sandbox, /tmp, /dev/shm), and death with its parent."""
    size = str(int(disk_mb) << 20)
    cmd = [
        shutil.which("bwrap") or "bwrap",
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/sandbox",
        "--setenv",
        "LANG",
        "C.UTF-8",
    ]
    for path in _ro_paths(python):
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        else:
            cmd += ["--ro-bind", path, path]
    cmd += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        size,
        "--tmpfs",
        "/dev/shm",
        "--size",
        size,
        "--tmpfs",
        "/sandbox",
        "--size",
        size,
        "--tmpfs",
        "/tmp",
        "--remount-ro",
        "/",
        "--chdir",
        "/sandbox",
    ]
    return cmd


# The same view as bwrap's, built by hand: $1 = the new root (an empty dir), $2 = tmpfs size,
# $3 = "ro paths" separated by spaces, then the command. The script runs as root of a new user namespace
# (pid 1 of a new pid namespace: when it exits, the kernel kills the rest), builds the root on a tmpfs,
# pivots into it and detaches the old one (so no /proc/<pid>/root leads back to the host), caps nested user
# namespaces at the one it then makes: the program runs as uid 65534 of that nested namespace, which the
# execve leaves with no capabilities, so it can mount nothing, and cannot inspect this script (whose
# capabilities it lacks: its pipes, the tests' included, are out of the program's reach).
_UNSHARE_SCRIPT = r"""
set -e
R=$1; SIZE=$2; RO=$3; shift 3
mount -t tmpfs -o size=1m,mode=755 aha "$R"
for p in $RO; do
  if [ -L "$p" ]; then ln -s "$(readlink "$p")" "$R$p"; else
    mkdir -p "$R$p"; mount --rbind "$p" "$R$p"; mount -o remount,bind,ro,nosuid,nodev "$R$p"; fi
done
mkdir -p "$R/proc" "$R/dev" "$R/sandbox" "$R/tmp" "$R/dev/shm" "$R/.old"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
for d in null zero random urandom; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
for d in sandbox tmp dev/shm; do mount -t tmpfs -o "size=$SIZE,mode=1777,nosuid,nodev" aha "$R/$d"; done
cd "$R"
pivot_root . .old
umount -l /.old
rmdir /.old
mount -o remount,bind,ro /
echo 1 > /proc/sys/user/max_user_namespaces
cd /sandbox
set +e
env -i PATH=/usr/bin:/bin HOME=/sandbox LANG=C.UTF-8 unshare --user --map-user=65534 --map-group=65534 -- "$@"
exit $?
"""


def unshare_command(disk_mb: int, python: str, workdir: str, pass_fds: tuple[int, ...] = ()) -> list[str]:
    """util-linux's unshare (where bubblewrap is missing): the view of :func:`bwrap_command`, built by
    :data:`_UNSHARE_SCRIPT`; it runs under :func:`drop_privileges`' ``setpriv --pdeathsig KILL``, so it dies with its
    parent (refused without setpriv: nothing else would stop it outliving a killed trainer)."""
    unshare = shutil.which("unshare") or "unshare"
    if shutil.which("setpriv") is None:
        raise SandboxError("unshare isolation needs util-linux's setpriv (to die with its parent)")
    root = os.path.join(workdir, "root")
    os.mkdir(root, 0o755)
    return [
        unshare,
        "--user",
        "--map-root-user",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--ipc",
        "--uts",
        "--",
        "/bin/sh",
        "-c",
        _UNSHARE_SCRIPT,
        "sh",
        root,
        str(int(disk_mb) << 20),
        " ".join(_ro_paths(python)),
    ]


BUILDERS = {
    "bwrap": lambda disk_mb, python, workdir, pass_fds=(): bwrap_command(disk_mb, python, workdir),
    "unshare": unshare_command,
    "none": lambda disk_mb, python, workdir, pass_fds=(): [],
}
