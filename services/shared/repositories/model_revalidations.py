from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import Connection

_COLUMNS = (
    "job_id, tenant_id, model_id, desired_schema, reported_schema, status, total, checked, "
    "invalid_count, devices, after_device, created_by, created_at, finished_at"
)


async def insert(
    conn: Connection,
    *,
    tenant_id: str,
    model_id: str,
    desired_schema: dict[str, Any],
    reported_schema: dict[str, Any] | None,
    created_by: str,
) -> asyncpg.Record | None:
    """The new job, or None while another check of the model runs."""
    return await conn.fetchrow(
        f"""INSERT INTO model_revalidations
                (job_id, tenant_id, model_id, desired_schema, reported_schema, total, created_by)
            SELECT $1, $2, $3, $4, $5, count(*), $6
            FROM devices
            WHERE tenant_id = $2 AND model_id = $3 AND revoked_at IS NULL
            ON CONFLICT (tenant_id, model_id) WHERE status = 'running' DO NOTHING
            RETURNING {_COLUMNS}""",  # noqa: S608
        uuid.uuid4(),
        tenant_id,
        model_id,
        desired_schema,
        reported_schema,
        created_by,
    )


async def get(
    conn: Connection, *, tenant_id: str, model_id: str, job_id: uuid.UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM model_revalidations
            WHERE tenant_id = $1 AND model_id = $2 AND job_id = $3""",  # noqa: S608
        tenant_id,
        model_id,
        job_id,
    )


async def claim_running(conn: Connection) -> asyncpg.Record | None:
    """A running job no other worker holds, locked until the transaction ends."""
    return await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM model_revalidations
            WHERE status = 'running'
            ORDER BY created_at
            LIMIT 1
            FOR UPDATE SKIP LOCKED"""  # noqa: S608
    )


async def record_progress(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    checked: int,
    invalid_count: int,
    devices: list[dict[str, Any]],
    after_device: str,
) -> None:
    await conn.execute(
        """UPDATE model_revalidations
           SET checked = $2, invalid_count = $3, devices = $4, after_device = $5
           WHERE job_id = $1""",
        job_id,
        checked,
        invalid_count,
        devices,
        after_device,
    )


async def finish(conn: Connection, *, job_id: uuid.UUID, status: str) -> None:
    await conn.execute(
        "UPDATE model_revalidations SET status = $2, finished_at = now() WHERE job_id = $1",
        job_id,
        status,
    )


async def desired_changed_since(
    conn: Connection, *, tenant_id: str, model_id: str, since: datetime
) -> list[asyncpg.Record]:
    """The model's devices whose twin changed after ``since`` (checked again at the end)."""
    return await conn.fetch(
        """SELECT d.device_id, s.desired_state
           FROM devices d JOIN device_state s USING (device_id)
           WHERE d.tenant_id = $1 AND d.model_id = $2 AND d.revoked_at IS NULL
             AND s.shadow_updated_at >= $3
           ORDER BY d.device_id""",
        tenant_id,
        model_id,
        since,
    )


async def count_devices(conn: Connection, *, tenant_id: str, model_id: str) -> int:
    count: int = await conn.fetchval(
        """SELECT count(*) FROM devices
           WHERE tenant_id = $1 AND model_id = $2 AND revoked_at IS NULL""",
        tenant_id,
        model_id,
    )
    return count


async def restart(conn: Connection, *, job_id: uuid.UUID, total: int) -> None:
    await conn.execute(
        """UPDATE model_revalidations
           SET total = $2, checked = 0, invalid_count = 0, devices = '[]'::jsonb,
               after_device = '', created_at = now()
           WHERE job_id = $1""",
        job_id,
        total,
    )
