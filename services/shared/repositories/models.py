"""Device models: a tenant's JSON Schemas for the twin of the devices that use them."""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.db import Connection

_COLUMNS = "model_id, tenant_id, desired_schema, reported_schema, created_at, updated_at"


async def insert(
    conn: Connection,
    *,
    tenant_id: str,
    model_id: str,
    desired_schema: dict[str, Any],
    reported_schema: dict[str, Any] | None,
) -> asyncpg.Record | None:
    """The new model, or None when the tenant already has one with this id."""
    return await conn.fetchrow(
        f"""INSERT INTO device_models (tenant_id, model_id, desired_schema, reported_schema)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (tenant_id, model_id) DO NOTHING
            RETURNING {_COLUMNS}""",  # noqa: S608 - fixed column list
        tenant_id,
        model_id,
        desired_schema,
        reported_schema,
    )


async def get(conn: Connection, *, tenant_id: str, model_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM device_models WHERE tenant_id = $1 AND model_id = $2",  # noqa: S608
        tenant_id,
        model_id,
    )


async def lock_for_change(
    conn: Connection, *, tenant_id: str, model_id: str
) -> asyncpg.Record | None:
    """The model, locked against desired writes of its devices until the transaction ends."""
    return await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM device_models
            WHERE tenant_id = $1 AND model_id = $2
            FOR UPDATE""",  # noqa: S608
        tenant_id,
        model_id,
    )


async def lock_for_use(conn: Connection, *, tenant_id: str, model_id: str) -> asyncpg.Record | None:
    """The model, share-locked so its schema cannot change before this transaction ends.

    ``FOR KEY SHARE`` lets any number of desired writes hold it at once; only a schema
    change (``lock_for_change``) waits for them, and they for it.
    """
    return await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM device_models
            WHERE tenant_id = $1 AND model_id = $2
            FOR KEY SHARE""",  # noqa: S608
        tenant_id,
        model_id,
    )


async def replace_schemas(
    conn: Connection,
    *,
    tenant_id: str,
    model_id: str,
    desired_schema: dict[str, Any],
    reported_schema: dict[str, Any] | None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""UPDATE device_models
            SET desired_schema = $3, reported_schema = $4, updated_at = now()
            WHERE tenant_id = $1 AND model_id = $2
            RETURNING {_COLUMNS}""",  # noqa: S608
        tenant_id,
        model_id,
        desired_schema,
        reported_schema,
    )
    assert row is not None
    return row


async def page(
    conn: Connection, *, tenant_id: str, after: str | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_COLUMNS} FROM device_models
            WHERE tenant_id = $1 AND ($2::text IS NULL OR model_id > $2)
            ORDER BY model_id
            LIMIT $3""",  # noqa: S608
        tenant_id,
        after,
        limit,
    )


async def device_count(conn: Connection, *, tenant_id: str, model_id: str) -> int:
    count: int = await conn.fetchval(
        """SELECT count(*) FROM devices
           WHERE tenant_id = $1 AND model_id = $2 AND revoked_at IS NULL""",
        tenant_id,
        model_id,
    )
    return count


async def desired_of_devices(
    conn: Connection, *, tenant_id: str, model_id: str, after: str, limit: int
) -> list[asyncpg.Record]:
    """The desired state of the model's live devices, one keyset page by device id."""
    return await conn.fetch(
        """SELECT d.device_id, s.desired_state
           FROM devices d JOIN device_state s USING (device_id)
           WHERE d.tenant_id = $1 AND d.model_id = $2 AND d.revoked_at IS NULL
             AND d.device_id > $3
           ORDER BY d.device_id
           LIMIT $4""",
        tenant_id,
        model_id,
        after,
        limit,
    )


async def lock_many_for_use(
    conn: Connection, *, tenant_id: str, model_ids: list[str]
) -> list[asyncpg.Record]:
    """``lock_for_use`` for several models in one statement (those that exist)."""
    return await conn.fetch(
        f"""SELECT {_COLUMNS} FROM device_models
            WHERE tenant_id = $1 AND model_id = ANY($2::text[])
            ORDER BY model_id
            FOR KEY SHARE""",  # noqa: S608
        tenant_id,
        model_ids,
    )
