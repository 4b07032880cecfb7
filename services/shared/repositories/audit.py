from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg

from shared.db import Connection


async def insert(
    conn: Connection,
    *,
    tenant_id: str | None,
    actor: str,
    action: str,
    target: str,
    detail: dict[str, Any],
    ip: str | None,
) -> None:
    await conn.execute(
        """INSERT INTO audit_log (tenant_id, actor, action, target, detail, ip)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        tenant_id,
        actor,
        action,
        target,
        detail,
        ip,
    )


async def page(
    conn: Connection,
    *,
    tenant_id: str,
    before: int | None,
    actor: str | None,
    action: str | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Newest first. ``action`` matches exactly, or as a prefix when it ends in ``.``."""
    return await conn.fetch(
        """SELECT id, at, actor, action, target, detail, ip FROM audit_log
           WHERE tenant_id = $1
             AND ($2::bigint IS NULL OR id < $2)
             AND ($3::text IS NULL OR actor = $3)
             AND ($4::text IS NULL OR action = $4
                  OR (right($4, 1) = '.' AND starts_with(action, $4)))
           ORDER BY id DESC
           LIMIT $5""",
        tenant_id,
        before,
        actor,
        action,
        limit,
    )


async def delete_older_than(conn: Connection, *, age: timedelta, limit: int) -> int:
    deleted: int = await conn.fetchval(
        """WITH old AS (SELECT id FROM audit_log WHERE at < now() - $1::interval LIMIT $2)
           , gone AS (DELETE FROM audit_log WHERE id IN (SELECT id FROM old) RETURNING 1)
           SELECT count(*) FROM gone""",
        age,
        limit,
    )
    return deleted
