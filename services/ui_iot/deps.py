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
from shared.settings import Settings
from shared.web import app_settings


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

    401 for a missing, malformed, forged or expired token; 403 for a role too low; then 404
    for a ``{device_id}`` in the path that no device can have (e.g. with a NUL byte, which
    PostgreSQL text cannot hold), checked after authentication so it reveals nothing.
    """

    def __init__(self, minimum: Role) -> None:
        self.model = HTTPBearerModel()
        self.scheme_name = "HTTPBearer"
        self.minimum = minimum

    async def __call__(self, request: Request) -> Principal:
        scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
        if not token or scheme.lower() != "bearer":
            raise Unauthorized("missing bearer token")
        try:
            secret: str = request.app.state.settings.jwt_secret
            who = verify_token(token, secret=secret)
        except InvalidToken as exc:
            raise Unauthorized("invalid or expired token") from exc
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
