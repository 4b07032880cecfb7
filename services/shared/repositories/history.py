"""The twin's history: one row per accepted desired write or report."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from shared.db import Connection


async def insert(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    kind: str,
    actor_type: str,
    actor_email: str | None,
    version: int,
    patch: dict[str, Any],
    at: datetime,
    shadow: str = "",
) -> None:
    await conn.execute(
        """INSERT INTO twin_history
               (tenant_id, device_id, kind, actor_type, actor_email, version, patch, at, shadow)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        tenant_id,
        device_id,
        kind,
        actor_type,
        actor_email,
        version,
        patch,
        at,
        shadow,
    )


async def page(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    before: int | None,
    limit: int,
    shadow: str = "",
) -> list[asyncpg.Record]:
    """One keyset page of a shadow's history ("" the classic one), newest first."""
    return await conn.fetch(
        """SELECT id, at, kind, actor_type, actor_email, actor_id, version, patch, shadow
           FROM twin_history
           WHERE device_id = $1 AND tenant_id = $2 AND ($3::bigint IS NULL OR id < $3)
             AND shadow = $5
           ORDER BY id DESC
           LIMIT $4""",
        device_id,
        tenant_id,
        before,
        limit,
        shadow,
    )


async def delete_older_than(conn: Connection, *, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` of the oldest rows written before ``cutoff``; how many went.

    Row locks only (``SKIP LOCKED``), so writers and other replicas' cleanups never wait.
    """
    status: str = await conn.execute(
        """DELETE FROM twin_history WHERE id IN (
               SELECT id FROM twin_history WHERE at < $1
               ORDER BY at LIMIT $2
               FOR UPDATE SKIP LOCKED)""",
        cutoff,
        limit,
    )
    return int(status.rsplit(" ", 1)[-1])
