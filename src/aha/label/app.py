"""The ranking app's HTTP side: a FastAPI app over :class:`~aha.label.store.Store`.

API (a contract scripts rely on — keep paths and status codes)::

    GET  /api/next          → 200 {"task_id", "prompt", "completions"}  | 204 nothing left for you
    POST /api/rankings      {"task_id", "ranking": [[0, 2], 1, 3]}  → 201
                            {"task_id", "skip": true}                 → 201 (the slot goes to someone else)
                            {"task_id", "flag": true[, "ranking"][, "note"]} → 201 (flagged as unsafe)
    GET  /api/me            → the caller's own counts
    POST /api/login         {"token"} → sets the HttpOnly session cookie and the CSRF cookie
    POST /api/logout
    GET  /api/admin/stats   → progress, per-labeler counts and speed, Kendall's W, flagged items (admin)
    GET  /api/admin/export  → JSONL in the ranking format, one row per ranking (admin)

Auth: ``Authorization: Bearer TOKEN``, or the cookie ``/api/login`` sets; with the cookie, every request
that changes something (POSTs, and ``/api/next``, which assigns) must echo the ``aha_csrf`` cookie in an
``X-CSRF-Token`` header (double submit: another site can make the browser send the cookie, not read it).
Every error is a 4xx with a one-line ``{"error": "..."}``. Model text is untrusted: the pages put it in
the DOM with ``textContent`` only, and the Content-Security-Policy forbids inline and foreign scripts.
"""

from __future__ import annotations

import hmac
import json
import secrets
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from aha.label.store import Refused, Store

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
SESSION_COOKIE, CSRF_COOKIE, CSRF_HEADER = "aha_session", "aha_csrf", "x-csrf-token"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"), (b"cache-control", b"no-store"),
]
PAGES = {"/": "label.html", "/login": "login.html", "/admin": "admin.html"}
ASSETS = {"app.css": "text/css", "label.js": "text/javascript", "admin.js": "text/javascript",
          "login.js": "text/javascript", "common.js": "text/javascript"}


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


class LimitsAndHeaders:
    """ASGI middleware: refuse bodies over ``max_body`` bytes with 413 (by Content-Length, or counted while
    reading a chunked body), and put the security headers on every response."""

    def __init__(self, app, max_body: int = MAX_BODY):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in SECURITY_HEADERS if h[0] not in names)]
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

        await self.app(scope, replay, send_with_headers)


class RankingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: int
    ranking: Any = None
    skip: bool = False
    flag: bool = False
    note: str | None = None


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str


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
    return 422, f"{loc}: {e.get('msg', 'invalid value')}"


def create_app(db_path: str | Path, *, store: Store | None = None, secure_cookies: bool = False,
               max_body: int = MAX_BODY) -> FastAPI:
    """The app over the database at ``db_path`` (tasks, labelers and settings already in it).

    ``secure_cookies=True`` marks the session cookie ``Secure`` (serve over HTTPS, e.g. behind a proxy)."""
    store = store or Store(db_path)
    app = FastAPI(title="aha label", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store

    # ------------------------------------------------------------------ errors: one line, never a 500 page
    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error(exc.status, exc.message, {"www-authenticate": "Bearer"} if exc.status == 401 else None)

    @app.exception_handler(Refused)
    async def _refused(request, exc: Refused):
        return error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return error(*_validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        message = {404: f"no such page: {request.url.path}", 405: f"{request.method} is not allowed here"}
        return error(exc.status_code, message.get(exc.status_code, exc.detail))

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):  # a bug, not the client's fault — still one JSON line
        return error(500, f"internal error ({type(exc).__name__}); the ranking you sent was not stored")

    # ------------------------------------------------------------------ auth
    def user(request: Request, csrf: bool = False) -> dict:
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "Authorization header must be 'Bearer TOKEN'")
            token = token.strip()
        else:
            token = request.cookies.get(SESSION_COOKIE, "")
            if not token:
                raise ApiError(401, "not logged in: send 'Authorization: Bearer TOKEN' or log in at /login")
            if csrf:
                sent, cookie = request.headers.get(CSRF_HEADER, ""), request.cookies.get(CSRF_COOKIE, "")
                if not cookie or not hmac.compare_digest(sent.encode(), cookie.encode()):
                    raise ApiError(403, "missing or wrong X-CSRF-Token header (it must equal the aha_csrf cookie)")
        row = store.user_for_token(token)
        if row is None:
            raise ApiError(401, "unknown token: ask the admin for yours (aha label add-labeler NAME)")
        return {"id": row["id"], "name": row["name"], "admin": bool(row["is_admin"])}

    def reader(request: Request) -> dict:
        return user(request)

    def writer(request: Request) -> dict:
        return user(request, csrf=True)

    def admin(request: Request) -> dict:
        u = user(request)
        if not u["admin"]:
            raise ApiError(403, "admin only: this needs the admin token")
        return u

    # ------------------------------------------------------------------ API
    @app.get("/api/next")
    def next_task(u: dict = Depends(writer)):
        task = store.next_task(u["id"])
        return Response(status_code=204) if task is None else task

    @app.post("/api/rankings", status_code=201)
    def post_ranking(body: RankingIn, u: dict = Depends(writer)):
        if body.note is not None and len(body.note) > 1000:
            raise ApiError(422, "note: at most 1000 characters")
        return store.submit(u["id"], body.task_id, body.ranking, skip=body.skip, flag=body.flag, note=body.note)

    @app.get("/api/me")
    def me(u: dict = Depends(reader)):
        return {**store.me(u["id"]), "admin": u["admin"], "per_task": store.per_task}

    @app.post("/api/login")
    def login(body: LoginIn, request: Request):
        row = store.user_for_token(body.token.strip())
        if row is None:
            raise ApiError(401, "unknown token: paste the token `aha label add-labeler` printed for you")
        csrf = secrets.token_urlsafe(24)
        resp = JSONResponse({"name": row["name"], "admin": bool(row["is_admin"]), "csrf": csrf})
        opts = {"samesite": "strict", "secure": secure_cookies, "path": "/"}
        resp.set_cookie(SESSION_COOKIE, body.token.strip(), httponly=True, **opts)
        resp.set_cookie(CSRF_COOKIE, csrf, httponly=False, **opts)  # the page reads it and echoes it
        return resp

    @app.post("/api/logout")
    def logout(u: dict = Depends(writer)):
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(SESSION_COOKIE, path="/")
        resp.delete_cookie(CSRF_COOKIE, path="/")
        return resp

    @app.get("/api/admin/stats")
    def admin_stats(u: dict = Depends(admin)):
        return store.stats()

    @app.get("/api/admin/export")
    def admin_export(u: dict = Depends(admin)):
        lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in store.export_rows())
        return StreamingResponse(lines, media_type="application/x-ndjson",
                                 headers={"content-disposition": 'attachment; filename="prefs.jsonl"'})

    # ------------------------------------------------------------------ pages (no CDN: everything from here)
    for route, name in PAGES.items():
        app.add_api_route(route, (lambda name=name: FileResponse(STATIC / name, media_type="text/html")),
                          methods=["GET"], include_in_schema=False)

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str):
        if name not in ASSETS:
            raise ApiError(404, f"no such file: {name}")
        return FileResponse(STATIC / name, media_type=ASSETS[name])

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    @app.get("/label", include_in_schema=False)
    def label_redirect():
        return RedirectResponse("/")

    app.add_middleware(LimitsAndHeaders, max_body=max_body)
    return app
