"""SQL of batched reports (``shared.services.report_batches``): a few statements per batch."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from shared.db import Connection


async def lock_live_twins(
    conn: Connection, *, tenant_ids: list[str], device_ids: list[str]
) -> list[asyncpg.Record]:
    """The live twins among these (tenant_id, device_id) pairs, locked in device id order (as
    single writes lock one and bulk desired jobs lock theirs), with the model's reported
    schema and the transaction clock (``now``) that stamps metadata and history."""
    return await conn.fetch(
        """SELECT s.device_id, s.tenant_id, s.reported_state, s.reported_metadata,
                  s.reported_version, s.desired_version, d.model_id, m.reported_schema,
                  now() AS now
           FROM unnest($1::text[], $2::text[]) AS a (tenant_id, device_id)
           JOIN device_state s ON s.device_id = a.device_id AND s.tenant_id = a.tenant_id
           JOIN devices d ON d.device_id = s.device_id AND d.tenant_id = a.tenant_id
                         AND d.revoked_at IS NULL
           LEFT JOIN device_models m ON m.tenant_id = d.tenant_id AND m.model_id = d.model_id
           ORDER BY s.device_id
           FOR UPDATE OF s""",
        tenant_ids,
        device_ids,
    )


async def write_reported_many(
    conn: Connection,
    *,
    device_ids: list[str],
    written: list[bool],
    reported: list[dict[str, Any] | None],
    metadata: list[dict[str, Any] | None],
    versions: list[int | None],
) -> None:
    """Each device's final reported state of the batch; every device is marked seen.

    A device whose reports were all rejected (``written`` false) is only marked seen, as
    ``twin_state.touch`` does, so its twin and ``shadow_updated_at`` stay as they were.
    """
    await conn.execute(
        """UPDATE device_state s
           SET reported_state = CASE WHEN w.written THEN w.reported ELSE s.reported_state END,
               reported_metadata =
                   CASE WHEN w.written THEN w.metadata ELSE s.reported_metadata END,
               reported_version =
                   CASE WHEN w.written THEN w.version ELSE s.reported_version END,
               shadow_updated_at =
                   CASE WHEN w.written THEN now() ELSE s.shadow_updated_at END,
               last_seen = now()
           FROM unnest($1::text[], $2::boolean[], $3::jsonb[], $4::jsonb[], $5::bigint[])
                AS w (device_id, written, reported, metadata, version)
           WHERE s.device_id = w.device_id""",
        device_ids,
        written,
        reported,
        metadata,
        versions,
    )


async def record_reported_history(
    conn: Connection,
    *,
    tenant_ids: list[str],
    device_ids: list[str],
    versions: list[int],
    patches: list[dict[str, Any]],
    actor_type: str,
    actor_email: str | None,
    at: datetime,
) -> None:
    """One twin_history row per accepted report, inserted (so numbered) in delivery order."""
    await conn.execute(
        """INSERT INTO twin_history
               (tenant_id, device_id, kind, actor_type, actor_email, version, patch, at)
           SELECT w.tenant_id, w.device_id, 'reported', $5, $6, w.version, w.patch, $7
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::jsonb[])
                WITH ORDINALITY AS w (tenant_id, device_id, version, patch, n)
           ORDER BY w.n""",
        tenant_ids,
        device_ids,
        versions,
        patches,
        actor_type,
        actor_email,
        at,
    )
