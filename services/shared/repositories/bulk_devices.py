"""SQL of bulk provisioning (simulators, demos, benchmarks): a statement or two per fleet."""

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
