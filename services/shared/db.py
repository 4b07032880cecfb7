"""PostgreSQL pools and the migration runner."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

# A plain connection or one borrowed from a pool: repositories accept either.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "db" / "migrations"
_MIGRATION_LOCK = 0x10_7C_10_D0  # advisory-lock key that serialises concurrent migrators
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")

# Errors that mean "the database is not reachable right now", rendered as 503.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    # A connection the server dropped mid-operation (e.g. at shutdown) can surface as this.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.PostgresConnectionError,
    TimeoutError,
)
# Anything a database round trip can raise that a long-running loop should retry after.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb's binary format is a version byte followed by the text form.
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: b"\x01" + orjson.dumps(value),
        decoder=lambda data: orjson.loads(data[1:]),
        format="binary",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset (``UNLISTEN *; RESET ALL; ...``), a round trip
    per checkout: pooled connections never hold session state (LISTEN and session locks use
    their own connections). asyncpg still rolls back a transaction left open."""


async def create_pool(
    database_url: str, *, application_name: str, max_size: int = 10
) -> asyncpg.Pool:
    """A pool that starts even when the database is down (min_size 0) and heals by itself."""
    pool = await asyncpg.create_pool(
        database_url,
        min_size=0,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        server_settings={"application_name": application_name},
        timeout=5,
        command_timeout=30,
    )
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool, *, timeout: float = 5.0) -> None:
    """Close gracefully, or, when a connection is still held after ``timeout`` seconds (a
    query stuck on a database that went away), terminate: a service stops either way."""
    try:
        async with asyncio.timeout(timeout):
            await pool.close()
    except TimeoutError:
        log.warning("database pool not closed within %.0fs; terminating it", timeout)
        pool.terminate()


async def connect(database_url: str, *, application_name: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        database_url, server_settings={"application_name": application_name}, timeout=10
    )
    await _init_connection(conn)
    return conn


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[Connection]:
    """One unit of work: a pooled connection inside one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        yield conn


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise RuntimeError(f"migration file name not understood: {path.name}")
        found.append((int(match.group(1)), path.stem, path))
    versions = [version for version, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError("two migrations share a number")
    return found


async def migrate(conn: Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations in order, each once and in its own transaction.

    A session advisory lock makes concurrent callers (replicas starting together) queue up;
    the second one finds nothing left to do.
    """
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, path in migration_files(directory):
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("applied migration %s", name)
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied
