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


def settings(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


def broker_link(request: Request) -> BrokerLink:
    value: BrokerLink = request.app.state.broker
    return value


def pool(request: Request) -> asyncpg.Pool:
    value: asyncpg.Pool = request.app.state.pool
    return value


async def connection(request: Request) -> AsyncIterator[Connection]:
    """One transaction per request: committed when the handler returns, rolled back on error."""
    async with pool(request).acquire() as conn, conn.transaction():
        yield conn


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token")
    try:
        return decode_token(credentials.credentials, secret=settings(request).jwt_secret)
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
