"""The AWS shadow messages of operator writes, waiting for ingest_iot's publisher."""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.db import Connection


async def add(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    shadow: str,
    delta: dict[str, Any] | None,
    documents: dict[str, Any],
) -> None:
    await conn.execute(
        """INSERT INTO shadow_outbox (tenant_id, device_id, shadow, delta, documents)
           VALUES ($1, $2, $3, $4, $5)""",
        tenant_id,
        device_id,
        shadow,
        delta,
        documents,
    )


async def add_many(conn: Connection, rows: list[tuple[str, str, str, Any, Any]]) -> None:
    await conn.executemany(
        """INSERT INTO shadow_outbox (tenant_id, device_id, shadow, delta, documents)
           VALUES ($1, $2, $3, $4, $5)""",
        rows,
    )


async def take(conn: Connection, *, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, tenant_id, device_id, shadow, delta, documents
           FROM shadow_outbox ORDER BY id LIMIT $1""",
        limit,
    )


async def sent(conn: Connection, ids: list[int]) -> None:
    await conn.execute("DELETE FROM shadow_outbox WHERE id = ANY($1::bigint[])", ids)
