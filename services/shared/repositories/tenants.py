from __future__ import annotations

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
