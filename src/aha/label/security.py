"""What every request to the ranking app passes through: the trusted proxy's headers, the body limit, the
security headers (500s included), a per-client rate limit, and the only places a login may send you to.

Proxy rule: ``X-Forwarded-Proto`` and ``X-Forwarded-For`` are honoured only from the addresses given to
``aha label serve --trust-proxy`` (none by default). From anyone else they are ignored, so a client cannot
make a plain-HTTP request look like HTTPS, or pass as another address to the rate limit.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from urllib.parse import unquote, urlsplit

from fastapi.responses import JSONResponse

MAX_BODY = 64 * 1024
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
HSTS = (b"strict-transport-security", b"max-age=31536000")  # only on responses that went out over HTTPS
PAGES = {"/": "label.html", "/login": "login.html", "/admin": "admin.html"}
LOGIN_TARGETS = ("/", "/admin")  # where a login may land: the app's own pages, nothing else

log = logging.getLogger("aha.label")


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """The one shape of every error: ``{"error": "one line"}``."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def safe_next(target: object, admin: bool) -> str:
    """Where to go after logging in: ``target`` if it is one of the app's own pages, else the caller's home page.

    Only a path from :data:`LOGIN_TARGETS` passes, compared after percent-decoding, so ``//evil.com``,
    ``/\\evil.com``, ``https://evil.com``, ``/%2F%2Fevil.com`` and ``javascript:`` all fall back home.

    >>> safe_next("/admin?x=1", admin=True), safe_next("//evil.com", admin=True), safe_next("/admin", admin=False)
    ('/admin', '/admin', '/')
    """
    home = "/admin" if admin else "/"
    if not isinstance(target, str) or len(target) > 200 or not target.startswith("/") or "\\" in target:
        return home
    if any(ord(ch) < 33 or ord(ch) > 126 for ch in target):
        return home  # whitespace, control characters, anything a browser may strip or fold into a host
    parts = urlsplit(target)
    path = unquote(parts.path)
    if parts.scheme or parts.netloc or path not in LOGIN_TARGETS or (path == "/admin" and not admin):
        return home
    return path


class SlidingWindow:
    """At most ``limit`` events per ``window_s`` seconds for each key (a client's address), kept in memory.

    >>> w = SlidingWindow(2, 60, clock=lambda: 0.0)
    >>> w.add("1.2.3.4"); w.add("1.2.3.4"); w.retry_after("1.2.3.4"), w.retry_after("5.6.7.8")
    (60, 0)
    """

    def __init__(self, limit: int, window_s: float, max_keys: int = 10_000, clock=time.monotonic):
        self.limit, self.window_s, self.max_keys, self.clock = limit, window_s, max_keys, clock
        self._events: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque:
        events = self._events.get(key)
        if events is None:
            return deque()
        while events and events[0] <= now - self.window_s:
            events.popleft()
        return events

    def retry_after(self, key: str) -> int:
        """Whole seconds until ``key`` may act again; 0 when it may act now."""
        with self._lock:
            now = self.clock()
            events = self._recent(key, now)
            if len(events) < self.limit:
                return 0
            return max(1, math.ceil(events[-self.limit] + self.window_s - now))

    def add(self, key: str) -> None:
        with self._lock:
            now = self.clock()
            events = self._recent(key, now)
            events.append(now)
            self._events[key] = events
            self._events.move_to_end(key)
            while len(self._events) > self.max_keys:  # bounded memory: forget the longest-quiet address
                self._events.popitem(last=False)


class Guard:
    """ASGI middleware around the whole app.

    - From a trusted proxy: the scheme and client address from ``X-Forwarded-Proto`` / ``X-Forwarded-For``.
    - Bodies over ``max_body`` bytes: 413 (by Content-Length, or counted while reading a chunked body).
    - The security headers on every response (HSTS too over HTTPS), a crash's 500 included: an exception
      becomes one JSON line for the client and a traceback in the server's log, never on the page.
    """

    def __init__(self, app, max_body: int = MAX_BODY, trusted_proxies: tuple[str, ...] = ()):
        self.app, self.max_body, self.trusted = app, max_body, frozenset(trusted_proxies)

    def _forwarded(self, scope) -> None:
        client = scope.get("client")
        if not client or client[0] not in self.trusted:
            return
        headers = dict(scope["headers"])
        proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1").split(",")[-1].strip().lower()
        if proto in ("http", "https"):
            scope["scheme"] = proto
        forwarded_for = headers.get(b"x-forwarded-for", b"").decode("latin-1").split(",")[-1].strip()
        if forwarded_for:
            scope["client"] = (forwarded_for, 0)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self._forwarded(scope)
        extra = [*SECURITY_HEADERS, *([HSTS] if scope.get("scheme") == "https" else [])]
        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in names)]
            await send(message)

        too_big = error(413, f"request body over the {self.max_body // 1024} KiB limit")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await too_big(scope, receive, send_with_headers)
        # read the whole (small) body first, counting: a chunked body has no Content-Length to trust
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body:
                return await too_big(scope, receive, send_with_headers)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await self.app(scope, replay, send_with_headers)
        except Exception as exc:
            log.exception("aha label: %s %s failed", scope.get("method"), scope.get("path"))
            if started:  # half a response is out: nothing better to send; the server closes the connection
                raise
            await error(
                500,
                f"internal error ({type(exc).__name__}): a bug in aha label, details in the server's log; "
                "a write it interrupted was rolled back",
            )(scope, receive, send_with_headers)
