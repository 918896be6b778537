"""The program that starts inside the sandbox (its source is passed to ``python3 -I -c``; it imports no aha).

argv: ``cpu_s memory_bytes nproc fsize_bytes tag verdict_fd tests_fd orphan_guard``; stdin: the program; ``tests_fd``
(when >= 0): the tests. The rlimits are set first, then ``START`` goes to stderr.

Without tests (``verdict_fd`` = -1) the program simply runs. With tests, the verdict must not be forgeable by
the program, so the two never share an interpreter:

- this process (the *checker*) makes itself non-dumpable (no ptrace, no ``/proc/<pid>/mem`` or ``fd/`` for
  processes without privileges: the sandbox has none), then forks the *program* process, which closes
  ``verdict_fd`` and ``tests_fd`` before the program's first line runs; the tests are read only after the fork,
  so they never exist in the program's memory (nor in any process it may inspect: bubblewrap's init keeps
  only stdio, and unshare's init has capabilities the program lacks);
- the program process runs the program, then answers the checker's requests over a socketpair: the names it
  defined, and calls, attributes, items, iteration and lengths of its objects. Every answer is plain data
  (None, bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset), rebuilt by the checker as
  the checker's own objects, or a handle to an object of the program's, which the checker holds as a
  ``Remote``: callable, with attributes and items, but with no ``__eq__``, ``__bool__`` or ordering of its own;
- the checker runs the tests in its own namespace (its own builtins, ``assert`` and ``AssertionError``) and
  writes the verdict, one JSON object, to ``verdict_fd``: the only descriptor the aha process reads it from.

So printing a marker, exiting 0 early, reading a nonce (there is none), patching ``assert``, builtins or the
checker, editing the tests (the program never sees them) or returning an always-equal object scores nothing.
"""

import os
import resource
import struct
import sys

START = b"\x00aha-sandbox-start\x00"
MEMORY = b"\x00aha-sandbox-memory\x00"
MAX_MESSAGE = 32 << 20  # bytes of one request or answer between checker and program
MAX_DEPTH = 64  # nesting of one value
_NO_IMPORT = {"antigravity", "this", "turtle", "turtledemo", "tkinter", "idlelib", "webbrowser"}


def _limits(cpu: int, mem: int, nproc: int, fsize: int) -> None:
    for res, value in (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_FSIZE, fsize),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(res, (value, value + 1 if res == resource.RLIMIT_CPU else value))


def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        data = os.read(fd, min(left, 1 << 20))
        if not data:
            break
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def _devnull_stdin() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)


def _run_program(src: str, namespace: dict) -> None:
    """Run the program as ``__main__``; on an exception print its traceback (the program's lines only) and exit 1."""
    sys.argv = ["main.py"]
    try:
        exec(compile(src, "main.py", "exec"), namespace)
    except MemoryError:
        os.write(2, MEMORY)
        os._exit(1)
    except SystemExit:
        raise
    except BaseException as exc:  # (imported late: slow)
        import linecache
        import traceback

        linecache.cache["main.py"] = (len(src), None, src.splitlines(True), "main.py")
        traceback.print_exception(exc.with_traceback(exc.__traceback__.tb_next))  # type: ignore[union-attr]  # typeshed: __traceback__ is Optional; an exception being handled has one
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


# ─────────────────────────── plain data across the socket (both sides) ───────────────────────────
# JSON arrays are lists; every JSON object is a tag: {"t": tuple}, {"d": [[k, v], ...]}, {"s": set},
# {"f": frozenset}, {"b": bytes as latin-1}, {"c": [re, im]}, {"n": float repr}, {"h": [handle, type]},
# {"m": module name}.


def _encode(value, handle, depth=0):
    """Plain data as JSON-ready values (subclasses as their base: a str or tuple subclass's own ``__eq__`` is lost
    on the way); anything else through ``handle``."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None or value is True or value is False:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__index__(value)
    if isinstance(value, float):
        return {"n": float.__repr__(value)}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray)):
        return {"b": bytes(value).decode("latin-1")}
    if isinstance(value, complex):
        return {"c": [float.__repr__(complex.real.__get__(value)), float.__repr__(complex.imag.__get__(value))]}
    if isinstance(value, dict):
        return {"d": [[_encode(k, handle, depth + 1), _encode(v, handle, depth + 1)] for k, v in dict.items(value)]}
    for base, tag in ((list, None), (tuple, "t"), (set, "s"), (frozenset, "f")):
        if isinstance(value, base):
            items = [_encode(v, handle, depth + 1) for v in base.__iter__(value)]  # type: ignore[arg-type]  # mypy cannot pair base with isinstance(value, base) over the loop's union (no typing import here: cast is not at hand)
            return items if tag is None else {tag: items}
    if type(value).__name__ == "module" and isinstance(getattr(value, "__name__", None), str):
        return {"m": value.__name__}
    return handle(value)


def _decode(value, remote, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None or type(value) in (bool, int, str, float):
        return value
    if type(value) is list:
        return [_decode(v, remote, depth + 1) for v in value]
    if type(value) is not dict or len(value) != 1:
        raise ValueError("malformed value")
    ((tag, body),) = value.items()
    if tag == "n":
        return float(str(body))
    if tag in ("t", "s", "f") and type(body) is list:
        items = [_decode(v, remote, depth + 1) for v in body]
        return {"t": tuple, "s": set, "f": frozenset}[tag](items)
    if tag == "d" and type(body) is list:
        return {_decode(k, remote, depth + 1): _decode(v, remote, depth + 1) for k, v in body}
    if tag == "b" and type(body) is str:
        return body.encode("latin-1")
    if tag == "c" and type(body) is list and len(body) == 2:
        return complex(float(str(body[0])), float(str(body[1])))
    if tag in ("h", "m"):
        return remote(tag, body)
    raise ValueError(f"malformed value tag {tag!r}")


def _send(sock, message, json) -> None:
    data = json.dumps(message, allow_nan=False).encode("utf-8", "surrogatepass")
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"a value of {len(data)} bytes is too large to pass (> {MAX_MESSAGE})")
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv(sock, json):
    head = _recv_exact(sock, 4)
    (n,) = struct.unpack(">I", head)
    if n > MAX_MESSAGE:
        raise ValueError("message too large")
    return json.loads(_recv_exact(sock, n).decode("utf-8", "surrogatepass"))


def _recv_exact(sock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(min(n - len(buf), 1 << 20))
        if not data:
            raise EOFError("the program's process ended")
        buf += data
    return bytes(buf)


# ─────────────────────────── the program's side ───────────────────────────


def serve(src: str, sock, json) -> None:
    """Run the program, send its names, then answer requests until 'bye' (runs after fork, never returns)."""
    handles: list = []

    def handle(obj):
        handles.append(obj)
        return {"h": [len(handles) - 1, type(obj).__name__[:80]]}

    def decode_arg(value):
        def remote(tag, body):
            if tag == "h" and type(body) is list and body and type(body[0]) is int and 0 <= body[0] < len(handles):
                return handles[body[0]]
            raise ValueError("unknown handle")

        return _decode(value, remote)

    namespace = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
    try:
        _run_program(src, namespace)
    except SystemExit as exc:
        _send(sock, {"died": f"the program called exit({exc.code!r}) before the tests"}, json)
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    sys.stdout.flush()
    names = {}
    for name, value in list(namespace.items()):
        if not name.startswith("__"):
            try:
                names[name] = _encode(value, handle)
            except Exception:  # noqa: BLE001 — a value that cannot travel becomes a handle
                names[name] = handle(value)
    _send(sock, {"names": names}, json)
    while True:
        try:
            request = _recv(sock, json)
        except (EOFError, OSError):
            os._exit(0)
        op = request.get("op")
        if op == "bye":
            sys.stdout.flush()
            os._exit(0)
        try:
            target = handles[request["h"]]
            if op == "call":
                result = target(*decode_arg(request["args"]), **decode_arg(request["kwargs"]))
            elif op == "getattr":
                result = getattr(target, request["name"])
            elif op == "getitem":
                result = target[decode_arg(request["key"])]
            elif op == "iter":
                result = iter(target)
            elif op == "next":
                result = next(target)
            elif op == "len":
                result = len(target)
            else:
                raise ValueError(f"unknown request {op!r}")
            answer = {"ok": _encode(result, handle)}
        except MemoryError:
            os.write(2, MEMORY)
            os._exit(1)
        except BaseException as exc:  # noqa: BLE001 — the checker decides what an exception means
            answer = {"raise": [type(exc).__name__[:80], str(exc)[:500]]}
        sys.stdout.flush()
        _send(sock, answer, json)


# ─────────────────────────── the checker's side ───────────────────────────


class RemoteError(Exception):
    """An exception raised by the program that has no builtin class of the same name."""


class Remote:
    """An object of the program's, held by the checker: calls, attributes, items, iteration and len go to it;
    nothing else (no ``__eq__``, ``__bool__`` or ordering of its own: a forged answer cannot come from it)."""

    __slots__ = ("_aha_checker", "_aha_handle", "_aha_type")

    def __init__(self, checker, handle, type_name):
        object.__setattr__(self, "_aha_checker", checker)
        object.__setattr__(self, "_aha_handle", handle)
        object.__setattr__(self, "_aha_type", type_name)

    def _aha_ask(self, op, **fields):
        checker = object.__getattribute__(self, "_aha_checker")
        return checker.ask({"op": op, "h": object.__getattribute__(self, "_aha_handle"), **fields})

    def __call__(self, *args, **kwargs):
        checker = object.__getattribute__(self, "_aha_checker")
        return self._aha_ask("call", args=checker.encode(list(args)), kwargs=checker.encode(dict(kwargs)))

    def __getattr__(self, name):
        return self._aha_ask("getattr", name=name)

    def __getitem__(self, key):
        return self._aha_ask("getitem", key=object.__getattribute__(self, "_aha_checker").encode(key))

    def __iter__(self):
        return self._aha_ask("iter")

    def __next__(self):
        return self._aha_ask("next")

    def __len__(self):
        n = self._aha_ask("len")
        if type(n) is not int:
            raise TypeError("len() of the program's object is not an int")
        return n

    def __bool__(self):
        raise TypeError(f"an object of the program's class {self._aha_type} has no truth value in the tests")

    def __repr__(self):
        return f"<the program's {object.__getattribute__(self, '_aha_type')}>"


class Checker:
    """The checker's side of the socket: asks the program, rebuilds its answers as plain data or :class:`Remote`
    handles, and runs the tests against its names (:meth:`run`)."""

    def __init__(self, sock, json, builtins):
        self.sock, self.json, self.builtins = sock, json, builtins
        self.stdlib: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())

    def remote(self, tag, body):
        """A value the program could only send by reference: a module (the checker imports its own copy, standard
        library only) or a handle to one of its objects."""
        if tag == "m":
            name = str(body)
            if name.partition(".")[0] not in self.stdlib or name.partition(".")[0] in _NO_IMPORT:
                raise ValueError(f"module {name!r} is not passed to the tests")
            __import__(name)
            return sys.modules[name]
        if type(body) is list and len(body) == 2 and type(body[0]) is int:
            return Remote(self, body[0], str(body[1]))
        raise ValueError("malformed handle")

    def encode(self, value):
        """Arguments for the program: plain data, or handles of its own objects."""

        def handle(obj):
            if type(obj) is Remote:
                return {"h": [object.__getattribute__(obj, "_aha_handle"), ""]}
            raise TypeError(f"cannot pass a {type(obj).__name__} to the program (only plain data and its own objects)")

        return _encode(value, handle)

    def ask(self, request):
        """One request; the answer rebuilt, or the program's exception raised here as a builtin class of the same
        name (else :class:`RemoteError`)."""
        try:
            _send(self.sock, request, self.json)
            answer = _recv(self.sock, self.json)
        except (EOFError, OSError) as exc:
            raise RemoteError(f"the program's process ended: {exc}") from None
        if type(answer) is not dict:
            raise RemoteError("the program answered with no value")
        if "ok" in answer:
            return _decode(answer["ok"], self.remote)
        kind, message = (list(answer.get("raise") or []) + ["RemoteError", ""])[:2]
        cls = getattr(self.builtins, str(kind), None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            raise cls(str(message))
        raise RemoteError(f"{kind}: {message}")

    def namespace(self, names: dict) -> dict:
        """The tests' globals: the checker's own builtins, and the program's names (never one that shadows a builtin,
        so the program's ``len`` or ``AssertionError`` does not reach the tests)."""
        namespace = {"__name__": "__main__", "__builtins__": self.builtins}
        for name, value in names.items():
            if type(name) is not str or hasattr(self.builtins, name) or name.startswith("_aha"):
                continue
            try:
                namespace[name] = _decode(value, self.remote)
            except Exception:  # noqa: BLE001 — a name that cannot be rebuilt is left out
                pass
        return namespace

    def run(self, tests: str) -> dict:
        """Wait for the program's names, run the tests; the verdict as a dict (never raises)."""
        verdict: dict[str, object] = {"ran": False, "finished": False, "passed": None, "error": ""}
        try:
            first = _recv(self.sock, self.json)
        except (EOFError, OSError, ValueError) as exc:
            verdict["error"] = f"the program ended before the tests: {exc}"
            return verdict
        if type(first) is not dict or "names" not in first or type(first["names"]) is not dict:
            verdict["error"] = (
                str(first.get("died") if type(first) is dict else "")[:300] or "the program sent no names"
            )
            return verdict
        verdict["ran"] = True
        namespace = self.namespace(first["names"])
        try:
            exec(compile(tests, "tests.py", "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001
            import traceback

            traceback.print_exception(exc.with_traceback(exc.__traceback__.tb_next))  # type: ignore[union-attr]  # typeshed: __traceback__ is Optional; an exception being handled has one
            verdict["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            return verdict
        verdict["finished"] = True
        passed = namespace.get("_aha_passed")
        verdict["passed"] = passed if type(passed) is int else None
        return verdict


def main() -> None:
    cpu, mem, nproc, fsize = (int(a) for a in sys.argv[1:5])
    verdict_fd, tests_fd, orphan_guard = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8] == "1"
    if orphan_guard:  # isolation 'none': no pid namespace dies with aha, so die with the parent ourselves
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
        if os.getppid() == 1:
            os._exit(1)
    _limits(cpu, mem, nproc, fsize)
    os.write(2, START)
    src = _read_exact(0, 1 << 30).decode("utf-8", "replace")
    _devnull_stdin()
    if verdict_fd < 0:
        _run_program(src, {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__})
        return
    import builtins
    import ctypes
    import json
    import socket

    sys.set_int_max_str_digits(0)
    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE, 0
        os.write(verdict_fd, b'{"error": "cannot make the checker non-dumpable"}')
        os._exit(2)
    mine, theirs = socket.socketpair()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os.close(verdict_fd)
        os.close(tests_fd)
        mine.close()
        try:
            serve(src, theirs, json)
        finally:
            os._exit(1)
    theirs.close()
    tests = _read_exact(tests_fd, 1 << 30).decode("utf-8", "replace")
    os.close(tests_fd)
    verdict = Checker(mine, json, builtins).run(tests)
    try:
        _send(mine, {"op": "bye"}, json)
    except OSError:
        pass
    mine.close()
    verdict["program_exit"] = _reap(pid)
    os.write(verdict_fd, json.dumps(verdict).encode())
    os.close(verdict_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    code = verdict["program_exit"]
    os._exit(128 - code if code is not None and code < 0 else (0 if verdict["finished"] else 1))


def _reap(pid: int, grace_s: float = 0.5):
    """The program process's exit code (negative: its signal), or None when it had to be killed after the tests."""
    import time

    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


if __name__ == "__main__":
    main()
