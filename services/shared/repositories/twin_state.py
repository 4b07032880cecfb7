from __future__ import annotations

from typing import Any

import asyncpg

from shared.db import Connection

_TWIN_COLUMNS = """s.device_id, s.tenant_id, s.desired_state, s.reported_state,
       s.desired_version, s.reported_version, s.shadow_updated_at, s.last_seen,
       s.connected, s.connected_at, s.disconnected_at, s.rejected, s.rejected_version"""


# The twin with its per-leaf metadata and the device's model, for the operator API and for
# writes that keep metadata and history (shared.services.twins).
_DOCUMENT_COLUMNS = f"""{_TWIN_COLUMNS}, s.desired_metadata, s.reported_metadata,
       s.document_version"""


async def get_documents(
    conn: Connection, *, tenant_ids: list[str], device_ids: list[str]
) -> list[asyncpg.Record]:
    """The twins of these (tenant_id, device_id) pairs, in one statement, each with its
    metadata, its device's model id and that model's reported schema: a row for each pair
    that names a twin (a device id of another tenant names none)."""
    return await conn.fetch(
        f"""SELECT {_DOCUMENT_COLUMNS}, d.model_id, m.reported_schema
            FROM device_state s
            JOIN devices d USING (device_id)
            LEFT JOIN device_models m ON m.tenant_id = d.tenant_id AND m.model_id = d.model_id
            WHERE (s.tenant_id, s.device_id) IN
                  (SELECT * FROM unnest($1::text[], $2::text[]))""",  # noqa: S608 - fixed columns
        tenant_ids,
        device_ids,
    )


async def lock_document(
    conn: Connection, *, tenant_id: str, device_id: str
) -> asyncpg.Record | None:
    """The twin row locked until the transaction ends, with the device's model id and the
    transaction's clock (``now``), which stamps metadata and history alike."""
    return await conn.fetchrow(
        f"""SELECT {_DOCUMENT_COLUMNS}, d.model_id, now() AS now
            FROM device_state s JOIN devices d USING (device_id)
            WHERE s.device_id = $1 AND s.tenant_id = $2
            FOR UPDATE OF s""",  # noqa: S608
        device_id,
        tenant_id,
    )


async def write_desired_document(
    conn: Connection,
    *,
    device_id: str,
    desired: dict[str, Any],
    metadata: dict[str, Any],
    version: int,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""UPDATE device_state s
            SET desired_state = $2, desired_metadata = $3, desired_version = $4,
                shadow_updated_at = now(), document_version = document_version + 1
            WHERE s.device_id = $1
            RETURNING {_DOCUMENT_COLUMNS}""",  # noqa: S608
        device_id,
        desired,
        metadata,
        version,
    )
    assert row is not None
    return row
