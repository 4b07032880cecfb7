"""The twin event log behind ``GET /customer/events`` (migration 007)."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from shared.db import Connection


async def has_unsequenced(conn: Connection) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM twin_events WHERE seq IS NULL)"))


async def sequence(conn: Connection, *, limit: int) -> int:
    """Give committed, unsequenced events their stream ids, in id order; call in a transaction.

    The counter row lock is taken by its own statement first, so the numbering statement's
    snapshot (read committed: one per statement) includes everything earlier sequencers
    committed. Returns how many events were numbered.
    """
    await conn.execute("SELECT last_seq FROM twin_event_counter FOR UPDATE")
    numbered: int = await conn.fetchval(
        """WITH batch AS (
               SELECT id, row_number() OVER (ORDER BY id) AS position
               FROM (SELECT id FROM twin_events WHERE seq IS NULL ORDER BY id LIMIT $1) AS b),
           numbered AS (
               UPDATE twin_events e SET seq = c.last_seq + batch.position
               FROM batch, twin_event_counter c
               WHERE e.id = batch.id AND e.seq IS NULL
               RETURNING e.seq),
           bumped AS (
               UPDATE twin_event_counter SET last_seq = (SELECT max(seq) FROM numbered)
               WHERE EXISTS (SELECT 1 FROM numbered)
               RETURNING last_seq)
           SELECT count(*) FROM numbered""",
        limit,
    )
    return numbered


async def last_seq(conn: Connection) -> int:
    value: int = await conn.fetchval("SELECT last_seq FROM twin_event_counter")
    return value


async def oldest_seq(conn: Connection) -> int | None:
    """The smallest stream id still kept (retention deletes older ones)."""
    value: int | None = await conn.fetchval("SELECT min(seq) FROM twin_events")
    return value


async def after(
    conn: Connection, *, tenant_id: str, after_seq: int, limit: int
) -> list[asyncpg.Record]:
    """The tenant's sequenced events after ``after_seq``, oldest first."""
    return await conn.fetch(
        """SELECT seq, device_id, kind, desired_version, reported_version, last_seen, at,
                  connected, connected_at, disconnected_at, shadow, rejected_version
           FROM twin_events
           WHERE tenant_id = $1 AND seq > $2
           ORDER BY seq
           LIMIT $3""",
        tenant_id,
        after_seq,
        limit,
    )


async def delete_older_than(conn: Connection, *, age: timedelta, limit: int) -> int:
    """Retention: drop up to ``limit`` of the oldest events past ``age``."""
    deleted: int = await conn.fetchval(
        """WITH gone AS (
               DELETE FROM twin_events
               WHERE id IN (SELECT id FROM twin_events
                            WHERE at < now() - $1::interval
                            ORDER BY at
                            LIMIT $2)
               RETURNING 1)
           SELECT count(*) FROM gone""",
        age,
        limit,
    )
    return deleted
