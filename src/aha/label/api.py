"""The labelers' API: the next task, a ranking, one's own counts, logging in and out."""

from __future__ import annotations

import math
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
)

from aha.label.deps import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    ApiError,
    client_address,
    reader,
    store,
    throttle,
    writer,
)
from aha.label.security import safe_next
from aha.label.store import Store

router = APIRouter(prefix="/api")
MAX_NOTE = 1000


def utf8_text(value: str | None) -> str | None:
    """A text SQLite can store: JSON's \\ud800 escapes decode to lone surrogates, which are not UTF-8."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("not valid text (it holds a lone UTF-16 surrogate)") from None
    return value


class RankingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: Annotated[StrictInt, Field(ge=0, lt=2**63)]  # strict: "3" or true are not task ids
    ranking: Any = None
    skip: StrictBool = False
    flag: StrictBool = False
    note: str | None = None

    _note_is_text = field_validator("note")(utf8_text)


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str
    next: str | None = None  # the page to land on; only the app's own pages are honoured


@router.get("/next")
def next_task(u: dict = Depends(writer), db: Store = Depends(store)):
    task = db.next_task(u["id"])
    return Response(status_code=204) if task is None else task


@router.post("/rankings", status_code=201)
def post_ranking(body: RankingIn, u: dict = Depends(writer), db: Store = Depends(store)):
    if body.note is not None and len(body.note) > MAX_NOTE:
        raise ApiError(422, f"note: at most {MAX_NOTE} characters")
    return db.submit(u["id"], body.task_id, body.ranking, skip=body.skip, flag=body.flag, note=body.note)


@router.get("/me")
def me(u: dict = Depends(reader), db: Store = Depends(store)):
    return {**db.me(u["id"]), "admin": u["admin"], "per_task": db.per_task}


@router.post("/login")
def login(body: LoginIn, request: Request, db: Store = Depends(store)):
    """Trade a token for a session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) that expires."""
    throttle(request, "logins", "logins")
    request.app.state.logins.add(client_address(request))
    row = db.user_for_token(body.token.strip())
    if row is None:
        request.app.state.failed_auth.add(client_address(request))
        raise ApiError(401, "unknown token (or revoked): paste the token `aha label add-labeler` printed for you")
    admin = bool(row["is_admin"])
    session, csrf = db.open_session(row["id"]), secrets.token_urlsafe(24)
    resp = JSONResponse({"name": row["name"], "admin": admin, "csrf": csrf, "next": safe_next(body.next, admin)})
    secure = request.app.state.secure_cookies or request.url.scheme == "https"
    opts: dict[str, Any] = {
        "samesite": "strict",
        "secure": secure,
        "path": "/",
        "max_age": max(1, math.ceil(db.session_s)),
    }
    resp.set_cookie(SESSION_COOKIE, session, httponly=True, **opts)
    resp.set_cookie(CSRF_COOKIE, csrf, httponly=False, **opts)  # the page reads it and echoes it
    return resp


@router.post("/logout")
def logout(request: Request, u: dict = Depends(writer), db: Store = Depends(store)):
    if session := request.cookies.get(SESSION_COOKIE):
        db.end_session(session)
    resp = JSONResponse({"ok": True})
    resp.delete_cookie(SESSION_COOKIE, path="/")
    resp.delete_cookie(CSRF_COOKIE, path="/")
    return resp
