"""What has to go out over MQTT: unpublished desired states and retained messages to clear,
and how far each broker's retained store is known to have got."""

from __future__ import annotations

import asyncpg

from shared.db import Connection

_DESIRED_COLUMNS = "device_id, tenant_id, desired_state, desired_version"


async def unpublished(conn: Connection, *, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_DESIRED_COLUMNS}
           FROM device_state
           WHERE desired_version > published_version
           ORDER BY device_id
           LIMIT $1""",  # noqa: S608 - constant columns
        limit,
    )


async def not_published_since(
    conn: Connection, *, seq: int, after: str, limit: int
) -> list[asyncpg.Record]:
    """Devices with a desired state last published at or before publish number ``seq``, by
    keyset page: what a fresh broker still lacks (later publishes went to it already)."""
    return await conn.fetch(
        f"""SELECT {_DESIRED_COLUMNS}
           FROM device_state
           WHERE device_id > $1 AND desired_version > 0 AND published_seq <= $2
           ORDER BY device_id
           LIMIT $3""",  # noqa: S608 - constant columns
        after,
        seq,
        limit,
    )


async def published_after(
    conn: Connection, *, seq: int, after: str, limit: int
) -> list[asyncpg.Record]:
    """Devices whose retained message went out after publish number ``seq``: what a broker
    that restarted from a store saved at ``seq`` may have lost."""
    return await conn.fetch(
        f"""SELECT {_DESIRED_COLUMNS}
           FROM device_state
           WHERE published_seq > $1 AND device_id > $2 AND desired_version > 0
           ORDER BY device_id
           LIMIT $3""",  # noqa: S608 - constant columns
        seq,
        after,
        limit,
    )


async def mark_published(conn: Connection, device_ids: list[str], versions: list[int]) -> int:
    """Record what went out; returns the publish number given to this batch."""
    seq: int = await conn.fetchval(
        """WITH s AS (SELECT nextval('desired_publish_seq') AS seq),
                done AS (
                    UPDATE device_state d
                    SET published_version = GREATEST(d.published_version, p.version),
                        published_seq = (SELECT seq FROM s)
                    FROM unnest($1::text[], $2::bigint[]) AS p (device_id, version)
                    WHERE d.device_id = p.device_id)
           SELECT seq FROM s""",
        device_ids,
        versions,
    )
    return seq


async def last_publish_seq(conn: Connection) -> int:
    value = await conn.fetchval("SELECT last_value FROM desired_publish_seq")
    return int(value)


async def broker_state(conn: Connection, broker: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT epoch, resync_after, fill_below FROM broker_delivery WHERE broker = $1", broker
    )


async def start_epoch(conn: Connection, broker: str, *, epoch: str) -> None:
    """A fresh broker: fill it with every device not published from now on."""
    await conn.execute(
        """INSERT INTO broker_delivery (broker, epoch, resync_after, fill_below)
           SELECT $1, $2, '', CASE WHEN is_called THEN last_value ELSE 0 END
           FROM desired_publish_seq
           ON CONFLICT (broker) DO UPDATE
               SET epoch = EXCLUDED.epoch, resync_after = EXCLUDED.resync_after,
                   fill_below = EXCLUDED.fill_below, updated_at = now()""",
        broker,
        epoch,
    )


async def filled_up_to(conn: Connection, broker: str, *, epoch: str, after: str | None) -> None:
    await conn.execute(
        """UPDATE broker_delivery SET resync_after = $3, updated_at = now()
           WHERE broker = $1 AND epoch = $2""",
        broker,
        epoch,
        after,
    )


async def oldest_unpublished_age(conn: Connection) -> float:
    age = await conn.fetchval(
        """SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(shadow_updated_at)), 0)
           FROM device_state WHERE desired_version > published_version"""
    )
    return float(age)


async def cleanups(conn: Connection, *, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT device_id, tenant_id, shadows FROM retained_cleanup ORDER BY device_id LIMIT $1",
        limit,
    )


async def cleared(conn: Connection, device_ids: list[str]) -> None:
    await conn.execute("DELETE FROM retained_cleanup WHERE device_id = ANY($1::text[])", device_ids)
