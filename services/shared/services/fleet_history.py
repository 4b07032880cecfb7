"""The fleet's sync counts over time (migration 019): a sample per tenant every
``SAMPLE_INTERVAL``, taken by ingest_iot's leader, read by the console's 24-hour chart.

Each sample is the tenant's ``GET /customer/fleet/summary`` at that moment. Samples sit on
slot boundaries (the time truncated to the interval), so a leader that changes mid-slot, or
two that overlap for a moment, write one row per slot: the first wins.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shared.aio import raise_if_cancelled
from shared.db import Connection
from shared.services import fleet

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = timedelta(minutes=5)
RETENTION = timedelta(days=2)
MAX_HOURS = 48


def slot(at: datetime, interval: timedelta = SAMPLE_INTERVAL) -> datetime:
    """``at`` truncated to the interval (UTC)."""
    seconds = int(interval.total_seconds())
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


async def sample_all(
    conn: Connection,
    *,
    stale_after: timedelta,
    at: datetime | None = None,
    interval: timedelta = SAMPLE_INTERVAL,
) -> int:
    """A sample of every tenant for the slot of ``at`` (now); returns how many were new."""
    when = slot(at or datetime.now(UTC), interval)
    written = 0
    for tenant_id in await conn.fetch("SELECT tenant_id FROM tenants ORDER BY tenant_id"):
        counts = await fleet.summary(
            conn, tenant_id=tenant_id["tenant_id"], stale_after=stale_after
        )
        inserted = await conn.fetchval(
            """INSERT INTO fleet_count_samples
                   (tenant_id, at, total, synced, pending, stale, connected)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (tenant_id, at) DO NOTHING
               RETURNING true""",
            tenant_id["tenant_id"],
            when,
            counts["total"],
            counts["synced"],
            counts["pending"],
            counts["stale"],
            counts["connected"],
        )
        written += bool(inserted)
    await conn.execute(
        "DELETE FROM fleet_count_samples WHERE at < $1", datetime.now(UTC) - RETENTION
    )
    return written


async def keep_sampling(
    pool: asyncpg.Pool, *, stale_after: timedelta, interval: timedelta = SAMPLE_INTERVAL
) -> None:
    """The leader's loop: a sample now, then one per slot."""
    while True:
        try:
            async with pool.acquire() as conn:
                await sample_all(conn, stale_after=stale_after, interval=interval)
        except Exception as exc:  # the next slot tries again
            raise_if_cancelled()
            log.warning("fleet count sample failed: %r", exc)
        now = datetime.now(UTC)
        next_slot = slot(now, interval) + interval
        await asyncio.sleep(max(1.0, (next_slot - now).total_seconds()))


async def series(conn: Connection, *, tenant_id: str, hours: int) -> dict[str, Any]:
    """The tenant's samples of the last ``hours``, oldest first."""
    rows = await conn.fetch(
        """SELECT at, total, synced, pending, stale, connected FROM fleet_count_samples
           WHERE tenant_id = $1 AND at >= now() - make_interval(hours => $2)
           ORDER BY at""",
        tenant_id,
        hours,
    )
    return {
        "interval_s": int(SAMPLE_INTERVAL.total_seconds()),
        "items": [{**dict(row), "at": row["at"].isoformat()} for row in rows],
    }
