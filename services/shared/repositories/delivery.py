"""What has to go out over MQTT: unpublished desired states and retained messages to clear."""

from __future__ import annotations

import asyncpg

from shared.db import Connection


async def unpublished(conn: Connection, *, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT device_id, tenant_id, desired_state, desired_version
           FROM device_state
           WHERE desired_version > published_version
           ORDER BY device_id
           LIMIT $1""",
        limit,
    )


async def all_desired(conn: Connection, *, after: str, limit: int) -> list[asyncpg.Record]:
    """Every device with a desired state, by keyset page, for republishing after a reconnect."""
    return await conn.fetch(
        """SELECT device_id, tenant_id, desired_state, desired_version
           FROM device_state
           WHERE device_id > $1 AND desired_version > 0
           ORDER BY device_id
           LIMIT $2""",
        after,
        limit,
    )


async def mark_published(conn: Connection, device_ids: list[str], versions: list[int]) -> None:
    await conn.execute(
        """UPDATE device_state s
           SET published_version = GREATEST(s.published_version, p.version)
           FROM unnest($1::text[], $2::bigint[]) AS p (device_id, version)
           WHERE s.device_id = p.device_id""",
        device_ids,
        versions,
    )


async def oldest_unpublished_age(conn: Connection) -> float:
    age = await conn.fetchval(
        """SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(shadow_updated_at)), 0)
           FROM device_state WHERE desired_version > published_version"""
    )
    return float(age)


async def cleanups(conn: Connection, *, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT device_id, tenant_id FROM retained_cleanup ORDER BY device_id LIMIT $1", limit
    )


async def cleared(conn: Connection, device_ids: list[str]) -> None:
    await conn.execute("DELETE FROM retained_cleanup WHERE device_id = ANY($1::text[])", device_ids)
