"""The ranking app's ``Depends`` functions: who is calling (a Bearer token, or a login session's cookie with
the CSRF header), with failed checks rate-limited per client.

Each route names what it needs — :func:`reader`, :func:`writer` (also checks CSRF for a cookie), :func:`admin`,
:func:`admin_writer` — and a test can swap any of them with ``app.dependency_overrides``. The app's state
(``request.app.state``) holds ``store``, ``failed_auth`` and ``logins`` (:class:`~aha.label.security.SlidingWindow`).
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from aha.label.store import Store

SESSION_COOKIE, CSRF_COOKIE, CSRF_HEADER = "aha_session", "aha_csrf", "x-csrf-token"


class ApiError(Exception):
    """An error for the client: ``status`` and one line; ``retry_after`` (seconds) for a 429."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


def store(request: Request) -> Store:
    return request.app.state.store


def client_address(request: Request) -> str:
    """The caller's address (the proxy's ``X-Forwarded-For`` when ``--trust-proxy`` names the proxy)."""
    return request.client.host if request.client else "unknown"


def throttle(request: Request, window_name: str, what: str) -> None:
    """429 with Retry-After when this client used up the app's ``window_name`` window."""
    wait = getattr(request.app.state, window_name).retry_after(client_address(request))
    if wait:
        raise ApiError(429, f"too many {what} from your address: try again in {wait} s", retry_after=wait)


def _user(request: Request, csrf: bool) -> dict:
    st = request.app.state
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Authorization header must be 'Bearer TOKEN'")
        throttle(request, "failed_auth", "failed token checks")
        row = st.store.user_for_token(token.strip())
        unknown = "unknown token (or revoked): ask the admin for yours (aha label add-labeler NAME)"
    else:
        session = request.cookies.get(SESSION_COOKIE, "")
        if not session:
            raise ApiError(401, "not logged in: send 'Authorization: Bearer TOKEN' or log in at /login")
        if csrf:
            sent, cookie = request.headers.get(CSRF_HEADER, ""), request.cookies.get(CSRF_COOKIE, "")
            if not cookie or not hmac.compare_digest(sent.encode(), cookie.encode()):
                raise ApiError(403, "missing or wrong X-CSRF-Token header (it must equal the aha_csrf cookie)")
        throttle(request, "failed_auth", "failed token checks")
        row = st.store.user_for_session(session)
        unknown = "your session has ended (expired, logged out or revoked): log in again at /login"
    if row is None:
        st.failed_auth.add(client_address(request))
        raise ApiError(401, unknown)
    return {"id": row["id"], "name": row["name"], "admin": bool(row["is_admin"])}


def reader(request: Request) -> dict:
    """The caller, for a request that changes nothing."""
    return _user(request, csrf=False)


def writer(request: Request) -> dict:
    """The caller, for a request that changes something (a cookie needs the CSRF header)."""
    return _user(request, csrf=True)


def admin(user: dict = Depends(reader)) -> dict:
    if not user["admin"]:
        raise ApiError(403, "admin only: this needs the admin token")
    return user


def admin_writer(user: dict = Depends(writer)) -> dict:
    return admin(user)
