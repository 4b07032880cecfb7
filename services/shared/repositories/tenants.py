from __future__ import annotations

import asyncpg

from shared.db import Connection


async def insert(conn: Connection, tenant_id: str, name: str) -> bool:
    """False when the tenant already exists."""
    row = await conn.fetchrow(
        "INSERT INTO tenants (tenant_id, name) VALUES ($1, $2) "
        "ON CONFLICT (tenant_id) DO NOTHING RETURNING tenant_id",
        tenant_id,
        name,
    )
    return row is not None


async def exists(conn: Connection, tenant_id: str) -> bool:
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)", tenant_id)
    )


async def list_with_counts(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT t.tenant_id, t.name, t.created_at,
                  (SELECT count(*) FROM users u WHERE u.tenant_id = t.tenant_id) AS users,
                  (SELECT count(*) FROM devices d
                   WHERE d.tenant_id = t.tenant_id AND d.revoked_at IS NULL) AS devices
           FROM tenants t ORDER BY t.tenant_id"""
    )


async def lock(conn: Connection, tenant_id: str) -> bool:
    return bool(
        await conn.fetchval("SELECT true FROM tenants WHERE tenant_id = $1 FOR UPDATE", tenant_id)
    )


async def contents(conn: Connection, tenant_id: str) -> dict[str, int]:
    """How many of each thing the tenant holds (what deleting it removes)."""
    row = await conn.fetchrow(
        """SELECT
             (SELECT count(*) FROM devices WHERE tenant_id = $1 AND revoked_at IS NULL)
                 AS devices,
             (SELECT count(*) FROM users WHERE tenant_id = $1) AS users,
             (SELECT count(*) FROM device_models WHERE tenant_id = $1) AS models,
             (SELECT count(*) FROM fleet_jobs WHERE tenant_id = $1) AS bulk_jobs""",
        tenant_id,
    )
    assert row is not None
    return dict(row)


async def delete(conn: Connection, tenant_id: str) -> None:
    """Delete the tenant and all it holds. The devices go first, the way one device is
    deleted: their retained messages queued for clearing, their rows deleted (the broker
    cuts each session), so the per-tenant counters still have their tenant when the device
    rows' triggers update them. Users go with the tenant (every replica drops their tokens).
    """
    await conn.execute(
        """INSERT INTO retained_cleanup (device_id, tenant_id, shadows)
           SELECT d.device_id, d.tenant_id,
                  ARRAY(SELECT n.name FROM device_shadows n WHERE n.device_id = d.device_id)
           FROM devices d WHERE d.tenant_id = $1 AND d.revoked_at IS NULL
           ON CONFLICT (device_id) DO NOTHING""",
        tenant_id,
    )
    await conn.execute("DELETE FROM device_state WHERE tenant_id = $1", tenant_id)
    await conn.execute("DELETE FROM devices WHERE tenant_id = $1", tenant_id)
    await conn.execute("DELETE FROM tenants WHERE tenant_id = $1", tenant_id)
