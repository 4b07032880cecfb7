"""Connected devices stay live: the broker sets last_seen when a device connects (SPEC §7),
and while it stays connected this refresh moves last_seen on, so a device that connects
and never reports does not turn stale.

Run by the desired publisher's leader only (one replica at a time). Every ``stale_after/4``
it marks seen the connected devices not seen for ``stale_after/2``, in batches: a device is
refreshed at most about every ``stale_after/2``, and is never older than ``3/4 stale_after``
while the leader runs.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import asyncpg

from shared.aio import raise_if_cancelled
from shared.repositories import presence

log = logging.getLogger(__name__)

BATCH = 1000


async def keep_connected_seen(
    pool: asyncpg.Pool, *, stale_after: timedelta, batch: int = BATCH
) -> None:
    interval = stale_after.total_seconds() / 4
    while True:
        try:
            await refresh_all(pool, older_than=stale_after / 2, batch=batch)
        except Exception as exc:  # the next round tries again
            raise_if_cancelled()
            log.warning("last_seen refresh of connected devices failed: %r", exc)
        await asyncio.sleep(interval)


async def refresh_all(pool: asyncpg.Pool, *, older_than: timedelta, batch: int = BATCH) -> int:
    """Every connected device not seen for ``older_than``, a batch per transaction."""
    total = 0
    while True:
        async with pool.acquire() as conn:
            refreshed = await presence.refresh_connected_seen(
                conn, older_than=older_than, limit=batch
            )
        total += refreshed
        if refreshed < batch:
            return total
