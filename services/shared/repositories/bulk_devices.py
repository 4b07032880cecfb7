"""SQL of bulk provisioning (the batch API, CSV import, simulators, demos, benchmarks): a
statement or two per batch, never one per device."""

from __future__ import annotations

from shared.db import Connection


async def upsert_credentials(
    conn: Connection,
    *,
    tenant_id: str,
    device_ids: list[str],
    token_hashes: list[bytes],
) -> set[str]:
    """Create these devices with their state rows, or give the tenant's live ones new
    credentials; returns the ids done (an id revoked or held by another tenant is not)."""
    rows = await conn.fetch(
        """INSERT INTO devices (device_id, tenant_id, name, token_hash)
           SELECT i.device_id, $1, i.device_id, i.token_hash
           FROM unnest($2::text[], $3::bytea[]) AS i (device_id, token_hash)
           ON CONFLICT (device_id) DO UPDATE
               SET token_hash = EXCLUDED.token_hash
               WHERE devices.tenant_id = EXCLUDED.tenant_id AND devices.revoked_at IS NULL
           RETURNING device_id, xmax = 0 AS created""",
        tenant_id,
        device_ids,
        token_hashes,
    )
    created = [row["device_id"] for row in rows if row["created"]]
    if created:
        await conn.execute(
            """INSERT INTO device_state (device_id, tenant_id)
               SELECT device_id, $1 FROM unnest($2::text[]) AS c (device_id)""",
            tenant_id,
            created,
        )
    return {row["device_id"] for row in rows}


async def insert_new(
    conn: Connection,
    *,
    tenant_id: str,
    device_ids: list[str],
    names: list[str],
    tags_json: list[str],
    model_ids: list[str | None],
    token_hashes: list[bytes],
) -> set[str]:
    """Register new devices with their profiles in one statement; the ids created. An id
    taken before (live, revoked or another tenant's) is skipped, so the caller can name it
    and roll back. Their state rows are ``insert_states``."""
    rows = await conn.fetch(
        """INSERT INTO devices (device_id, tenant_id, name, tags, model_id, token_hash)
           SELECT i.device_id, $1, i.name, i.tags::jsonb, i.model_id, i.token_hash
           FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])
               AS i (device_id, name, tags, model_id, token_hash)
           ORDER BY i.device_id  -- overlapping batches wait on each other, never deadlock
           ON CONFLICT (device_id) DO NOTHING
           RETURNING device_id""",
        tenant_id,
        device_ids,
        names,
        tags_json,
        model_ids,
        token_hashes,
    )
    return {row["device_id"] for row in rows}


async def insert_states(conn: Connection, *, tenant_id: str, device_ids: list[str]) -> None:
    """The twin rows of new devices, in one statement: the statement-level fleet counters
    (migrations 008, 010) add the whole batch at once."""
    await conn.execute(
        """INSERT INTO device_state (device_id, tenant_id)
           SELECT device_id, $1 FROM unnest($2::text[]) AS c (device_id)""",
        tenant_id,
        device_ids,
    )


async def taken_ids(conn: Connection, device_ids: list[str]) -> set[str]:
    """Which of these ids any device holds or held, in any tenant (ids are never reused)."""
    rows = await conn.fetch(
        "SELECT device_id FROM devices WHERE device_id = ANY($1::text[])", device_ids
    )
    return {row["device_id"] for row in rows}
