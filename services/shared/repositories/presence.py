"""Presence kept by the broker (migrations 011 and 012): what the services add to it."""

from __future__ import annotations

from datetime import timedelta

from shared.db import Connection


async def refresh_connected_seen(conn: Connection, *, older_than: timedelta, limit: int) -> int:
    """Mark up to ``limit`` connected devices not seen for ``older_than`` as seen now, the
    oldest first (``idx_device_state_connected_last_seen``); returns how many.

    Rows locked by a writer (a report batch, which sets last_seen itself) are skipped.
    """
    refreshed: int = await conn.fetchval(
        """WITH due AS (
               SELECT device_id FROM device_state
               WHERE connected AND last_seen < now() - $1::interval
               ORDER BY last_seen
               LIMIT $2
               FOR UPDATE SKIP LOCKED),
           refreshed AS (
               UPDATE device_state s SET last_seen = now()
               FROM due WHERE s.device_id = due.device_id
               RETURNING 1)
           SELECT count(*) FROM refreshed""",
        older_than,
        limit,
    )
    return refreshed
