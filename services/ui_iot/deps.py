"""Request dependencies: the pool, the authenticated operator, role checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.db import Connection
from shared.errors import Forbidden, Unauthorized
from shared.mqtt import BrokerLink
from shared.security import InvalidToken, Principal, Role, decode_token, role_at_least
from shared.settings import Settings

_bearer = HTTPBearer(auto_error=False)


# Dependencies are ``async def`` even when they await nothing: FastAPI runs a plain ``def``
# dependency in a worker thread, a hop that cost 6-12 % of ui_iot's time per request.
async def settings(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


async def broker_link(request: Request) -> BrokerLink:
    value: BrokerLink = request.app.state.broker
    return value


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


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token")
    try:
        secret: str = request.app.state.settings.jwt_secret
        return decode_token(credentials.credentials, secret=secret)
    except InvalidToken as exc:
        raise Unauthorized("invalid or expired token") from exc


def require(minimum: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not role_at_least(who.role, minimum):
            raise Forbidden(f"this needs the {minimum} role; you are {who.role}")
        return who

    return check


Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
Conn = Annotated[Connection, Depends(connection)]
AppSettings = Annotated[Settings, Depends(settings)]
Pool = Annotated[asyncpg.Pool, Depends(pool)]
Link = Annotated[BrokerLink, Depends(broker_link)]
