"""The ranking app's HTTP side: a FastAPI app over :class:`~aha.label.store.Store`, assembled from the routers
in :mod:`aha.label.api` (labelers) and :mod:`aha.label.admin`, the ``Depends`` functions of
:mod:`aha.label.deps` and the middleware of :mod:`aha.label.security`.

API (a contract scripts rely on — keep paths and status codes)::

    GET  /api/next          → 200 {"task_id", "prompt", "completions"}  | 204 nothing left for you
    POST /api/rankings      {"task_id", "ranking": [[0, 2], 1, 3]}  → 201
                            {"task_id", "skip": true}                 → 201 (the slot goes to someone else)
                            {"task_id", "flag": true[, "ranking"][, "note"]} → 201 (flagged as unsafe)
    GET  /api/me            → the caller's own counts
    POST /api/login         {"token"[, "next"]} → {"name", "admin", "csrf", "next"}; sets the HttpOnly session
                            cookie (a session that expires) and the CSRF cookie
    POST /api/logout        ends the session
    GET  /api/admin/stats   → progress, per-labeler counts and speed, Kendall's W, flagged items (admin)
    GET  /api/admin/export  → JSONL in the ranking format, one row per ranking (admin)
    POST /api/admin/revoke  {"name"} → the labeler's token and sessions stop at once; rankings stay (admin)

Auth: ``Authorization: Bearer TOKEN``, or the session cookie ``/api/login`` sets; with the cookie, every request
that changes something (POSTs, and ``/api/next``, which assigns) must echo the ``aha_csrf`` cookie in an
``X-CSRF-Token`` header (double submit: another site can make the browser send the cookie, not read it).
Logins and failed token checks are limited per client address: 429 with ``Retry-After``.
Every error is a 4xx (or 500) with a one-line ``{"error": "..."}``. Model text is untrusted: the pages put it
in the DOM with ``textContent`` only, and the Content-Security-Policy forbids inline and foreign scripts.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from aha.label import admin, api
from aha.label.deps import ApiError
from aha.label.security import CSP, MAX_BODY, PAGES, Guard, SlidingWindow, error  # noqa: F401 (CSP: re-exported)
from aha.label.store import Refused, Store

STATIC = Path(__file__).parent / "static"
ASSETS = {
    "app.css": "text/css",
    "label.js": "text/javascript",
    "admin.js": "text/javascript",
    "login.js": "text/javascript",
    "common.js": "text/javascript",
}
LOGINS_PER_MINUTE = 10  # per client address; failed token checks: 3× that


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return 400, "request body is not valid JSON"
    e = errs[0] if errs else {}
    loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
    if e.get("type") == "missing":
        return 422, f"missing field '{loc}'"
    if e.get("type") == "extra_forbidden":
        return 422, f"unknown field '{loc}'"
    return 422, f"{loc}: {str(e.get('msg', 'invalid value')).removeprefix('Value error, ')}"[:300]


async def _api_error(request, exc: ApiError):
    headers = {"www-authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.retry_after:
        headers["retry-after"] = str(exc.retry_after)
    return error(exc.status, exc.message, headers or None)


async def _refused(request, exc: Refused):
    return error(exc.status, exc.message)


async def _invalid(request, exc: RequestValidationError):
    return error(*_validation_message(exc))


async def _http(request, exc: StarletteHTTPException):
    message = {
        400: "request body could not be parsed as JSON (nested too deep?)",
        404: f"no such page: {request.url.path}"[:300],
        405: f"{request.method} is not allowed here",
    }
    return error(exc.status_code, message.get(exc.status_code, exc.detail))


def create_app(
    db_path: str | Path,
    *,
    store: Store | None = None,
    secure_cookies: bool = False,
    max_body: int = MAX_BODY,
    trusted_proxies: tuple[str, ...] = (),
    logins_per_minute: int = LOGINS_PER_MINUTE,
) -> FastAPI:
    """The app over the database at ``db_path`` (tasks, labelers and settings already in it).

    Cookies are ``Secure`` when the request came over HTTPS — directly, or per ``X-Forwarded-Proto`` from one
    of ``trusted_proxies`` — and always with ``secure_cookies=True``. ``logins_per_minute`` per client address
    (failed token checks: three times as many) before a 429."""
    app = FastAPI(title="aha label", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store or Store(db_path)
    app.state.secure_cookies = secure_cookies
    app.state.logins = SlidingWindow(logins_per_minute, 60)
    app.state.failed_auth = SlidingWindow(3 * logins_per_minute, 60)

    # errors: one line each; a crash's 500 is Guard's (it wraps everything, so the 500 gets the headers too)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]  # Starlette types a handler as taking any Exception; it is called only with the class it is registered for
    app.add_exception_handler(Refused, _refused)  # type: ignore[arg-type]  # (as above)
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]  # (as above)
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]  # (as above)

    app.include_router(api.router)
    app.include_router(admin.router)

    # pages (no CDN: everything from here)
    for route, name in PAGES.items():
        app.add_api_route(
            route,
            (lambda name=name: FileResponse(STATIC / name, media_type="text/html")),
            methods=["GET"],
            include_in_schema=False,
        )

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str):
        if name not in ASSETS:
            raise ApiError(404, f"no such file: {name}"[:300])
        return FileResponse(STATIC / name, media_type=ASSETS[name])

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    @app.get("/label", include_in_schema=False)
    def label_redirect():
        return RedirectResponse("/")

    app.add_middleware(Guard, max_body=max_body, trusted_proxies=tuple(trusted_proxies))
    return app
