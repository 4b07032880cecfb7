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


async def add_batch(
    conn: Connection,
    *,
    tenant_id: str,
    device_ids: list[str],
    previous: dict[str, Any] | None = None,
) -> None:
    """A bulk job's batch of classic desired writes: one row naming its devices, with each
    one's ``previous`` document (AWS form, by device id)."""
    await conn.execute(
        """INSERT INTO shadow_outbox (tenant_id, device_id, shadow, devices, previous)
           VALUES ($1, '', '', $2::text[], $3)""",
        tenant_id,
        device_ids,
        previous,
    )


async def classic_shadows(conn: Connection, *, device_ids: list[str]) -> list[asyncpg.Record]:
    """The classic shadows of these devices as they stand (for a bulk job's messages)."""
    return await conn.fetch(
        """SELECT device_id, desired_state, reported_state, desired_metadata,
                  reported_metadata, document_version, shadow_updated_at
           FROM device_state WHERE device_id = ANY($1::text[])""",
        device_ids,
    )


async def take(conn: Connection, *, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, tenant_id, device_id, shadow, delta, documents, devices, previous
           FROM shadow_outbox ORDER BY id LIMIT $1""",
        limit,
    )


async def sent(conn: Connection, ids: list[int]) -> None:
    await conn.execute("DELETE FROM shadow_outbox WHERE id = ANY($1::bigint[])", ids)
