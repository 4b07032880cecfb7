"""Request dependencies: the pool, the authenticated operator, role checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from fastapi.security.utils import get_authorization_scheme_param

from shared.db import Connection
from shared.errors import Forbidden, NotFound, Unauthorized
from shared.ids import is_device_id
from shared.security import InvalidToken, Principal, Role, role_at_least, verify_token
from shared.services.sessions import UserStates
from shared.settings import Settings
from shared.web import app_settings
from ui_iot import session


# Dependencies are ``async def`` even when they await nothing: FastAPI runs a plain ``def``
# dependency in a worker thread, a hop per request that shows in ui_iot's profiles.
async def settings(request: Request) -> Settings:
    return app_settings(request)


def app_pool(request: Request) -> asyncpg.Pool:
    value: asyncpg.Pool = request.app.state.pool
    return value


async def pool(request: Request) -> asyncpg.Pool:
    return app_pool(request)


async def connection(request: Request) -> AsyncIterator[Connection]:
    """One unit of work per request.

    A write runs in one transaction, committed when the handler returns and rolled back on
    error. A read (GET) runs its statements on a plain connection: no BEGIN/COMMIT round
    trips, and each statement still sees only committed data.
    """
    async with app_pool(request).acquire() as conn:
        if request.method in {"GET", "HEAD"}:
            yield conn
        else:
            async with conn.transaction():
                yield conn


class Caller(SecurityBase):
    """The authenticated operator holding at least ``minimum``: one dependency for what was
    a chain (bearer credentials, token, role, device id), as FastAPI resolving each layer
    was a tenth of a read's cost. To OpenAPI it is the ``HTTPBearer`` scheme.

    The token comes from the ``Authorization`` header (scripts) or else the console's session
    cookie, which a write must back with its CSRF header (``ui_iot.session``).

    401 for a missing, malformed, forged, expired or revoked token (its user disabled or
    deleted, its password changed); 403 for a role too low (the user's role now, not when
    the token was issued) or a cookie-authenticated write without its CSRF token; then 404
    for a ``{device_id}`` in the path that no device can have (e.g. with a NUL byte, which
    PostgreSQL text cannot hold), checked after authentication so it reveals nothing.
    """

    def __init__(self, minimum: Role) -> None:
        self.model = HTTPBearerModel()
        self.scheme_name = "HTTPBearer"
        self.minimum = minimum

    async def __call__(self, request: Request) -> Principal:
        secret: str = request.app.state.settings.jwt_secret
        scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
        from_cookie = False
        if not token or scheme.lower() != "bearer":
            token = request.cookies.get(session.SESSION_COOKIE, "")
            if not token:
                raise Unauthorized("missing bearer token")
            from_cookie = True
        try:
            who = verify_token(token, secret=secret)
        except InvalidToken as exc:
            raise Unauthorized("invalid or expired token") from exc
        states: UserStates = request.app.state.user_states
        known = states.current(who)
        current = await states.check(who) if known is False else known
        if current is None:
            raise Unauthorized("this token has been revoked; sign in again")
        who = current  # type: ignore[assignment]
        if from_cookie and request.method not in session.SAFE_METHODS:
            session.require_csrf(request, token, secret=secret)
        if not role_at_least(who.role, self.minimum):
            raise Forbidden(f"this needs the {self.minimum} role; you are {who.role}")
        device_id = request.path_params.get("device_id")
        if device_id is not None and not is_device_id(device_id):
            raise NotFound(f"device {device_id!r} not found")
        return who


VIEWER = Caller("viewer")
Viewer = Annotated[Principal, Depends(VIEWER)]
Operator = Annotated[Principal, Depends(Caller("operator"))]
Admin = Annotated[Principal, Depends(Caller("admin"))]
# "function": the transaction commits before the response is sent. With FastAPI's default
# ("request") it would commit after, so a client could be told 200 for a write that then
# failed to commit, and could read the twin before its own write was visible.
Conn = Annotated[Connection, Depends(connection, scope="function")]
AppSettings = Annotated[Settings, Depends(settings)]
Pool = Annotated[asyncpg.Pool, Depends(pool)]


async def client_ip(request: Request) -> str | None:
    """The peer's address (a proxy in front must pass the client's on as the peer, e.g.
    uvicorn's --proxy-headers with --forwarded-allow-ips)."""
    return request.client.host if request.client else None


ClientIp = Annotated[str | None, Depends(client_ip)]
