from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg

from shared.db import Connection

_LIST_COLUMNS = """d.device_id, d.tenant_id, d.name, d.tags, d.created_at,
       s.desired_version, s.reported_version, s.last_seen,
       s.connected, s.connected_at, s.disconnected_at, s.rejected_version"""

# Sync status is the SQL function of migration 013; the status goes in as a constant (from
# this fixed set, never from the request), so the planner folds the function to the one
# predicate asked for and can use the indexes behind it.
_STATUS_LITERALS = {
    "stale": "'stale'",
    "synced": "'synced'",
    "pending": "'pending'",
    "rejected": "'pending'",
}
# A refusal in effect (SPEC §11, migration 018) turns a pending twin into a rejected one.
_REJECTED = "(s.rejected_version IS NOT NULL AND s.rejected_version > s.reported_version)"


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """Which of a tenant's live devices a list page or a bulk job covers (all set ones hold)."""

    sync_status: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    model_id: str | None = None
    text: str | None = None
    device_ids: tuple[str, ...] | None = None
    connected: bool | None = None


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def filter_sql(
    device_filter: DeviceFilter, *, tenant_id: str, stale_after: timedelta, params: list[Any]
) -> str:
    """The WHERE clause over ``devices d JOIN device_state s``; appends its values to params.

    Conditions are repeated on both sides of the join where that lets the planner start from
    either table's index (equal keys do not carry inequalities across a join).
    """

    def arg(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    tenant = arg(tenant_id)
    clauses = [f"d.tenant_id = {tenant}", f"s.tenant_id = {tenant}", "d.revoked_at IS NULL"]
    if device_filter.sync_status is not None:
        status = _STATUS_LITERALS[device_filter.sync_status]
        cutoff = arg(stale_after)
        clauses.append(
            f"twin_has_sync_status({status}, s.desired_version, s.reported_version,"
            f" s.last_seen, now() - {cutoff}::interval)"
        )
        if device_filter.sync_status == "rejected":
            clauses.append(_REJECTED)
        elif device_filter.sync_status == "pending":
            clauses.append(f"NOT {_REJECTED}")
    if device_filter.tags:
        clauses.append(f"d.tags @> {arg(device_filter.tags)}::jsonb")
    if device_filter.model_id is not None:
        clauses.append(f"d.model_id = {arg(device_filter.model_id)}")
    if device_filter.text:
        pattern = arg(_like_pattern(device_filter.text))
        clauses.append(f"(d.device_id ILIKE {pattern} OR d.name ILIKE {pattern})")
    if device_filter.device_ids is not None:
        clauses.append(f"d.device_id = ANY({arg(list(device_filter.device_ids))}::text[])")
    # Literal conditions, not parameters: the planner matches ``s.connected`` to the
    # partial index of connected devices only when it sees the value.
    if device_filter.connected is True:
        clauses.append("s.connected")
    elif device_filter.connected is False:
        clauses.append("NOT s.connected")
    return " AND ".join(clauses)


async def insert(
    conn: Connection,
    *,
    device_id: str,
    tenant_id: str,
    name: str,
    token_hash: bytes,
) -> bool:
    """Register a device and its state row; False when the id is taken (now or before)."""
    created = await conn.fetchval(
        """INSERT INTO devices (device_id, tenant_id, name, token_hash)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (device_id) DO NOTHING
           RETURNING true""",
        device_id,
        tenant_id,
        name,
        token_hash,
    )
    if not created:
        return False
    await conn.execute(
        "INSERT INTO device_state (device_id, tenant_id) VALUES ($1, $2)", device_id, tenant_id
    )
    return True


async def list_page(
    conn: Connection,
    *,
    tenant_id: str,
    device_filter: DeviceFilter,
    after: str | None,
    limit: int,
    stale_after: timedelta,
) -> list[asyncpg.Record]:
    """One keyset page ordered by device_id, so devices added meanwhile never shift it."""
    params: list[Any] = []
    where = filter_sql(device_filter, tenant_id=tenant_id, stale_after=stale_after, params=params)
    if after is not None:
        params.append(after)
        where += f" AND d.device_id > ${len(params)} AND s.device_id > ${len(params)}"
    params.append(limit)
    return await conn.fetch(
        f"""SELECT {_LIST_COLUMNS}
            FROM devices d JOIN device_state s ON s.device_id = d.device_id
            WHERE {where}
            ORDER BY d.device_id
            LIMIT ${len(params)}""",  # noqa: S608 - only fixed fragments are interpolated
        *params,
    )


async def revoke(conn: Connection, *, tenant_id: str, device_id: str) -> bool:
    """Soft-delete: the token stops working at once; the id stays reserved."""
    revoked = await conn.fetchval(
        """UPDATE devices SET revoked_at = now()
           WHERE device_id = $1 AND tenant_id = $2 AND revoked_at IS NULL
           RETURNING true""",
        device_id,
        tenant_id,
    )
    if not revoked:
        return False
    # Its named shadows go too (the device row stays, so no cascade): their retained
    # desired messages are queued for clearing with the classic one.
    names = await conn.fetchval(
        """WITH gone AS (DELETE FROM device_shadows WHERE device_id = $1 RETURNING name)
           SELECT coalesce(array_agg(name ORDER BY name), '{}') FROM gone""",
        device_id,
    )
    await conn.execute("DELETE FROM device_state WHERE device_id = $1", device_id)
    await conn.execute(
        """INSERT INTO retained_cleanup (device_id, tenant_id, shadows) VALUES ($1, $2, $3)
           ON CONFLICT (device_id) DO UPDATE
               SET shadows = retained_cleanup.shadows || EXCLUDED.shadows""",
        device_id,
        tenant_id,
        names,
    )
    return True


async def set_token(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    token_hash: bytes,
) -> bool:
    updated = await conn.fetchval(
        """UPDATE devices SET token_hash = $3
           WHERE device_id = $1 AND tenant_id = $2 AND revoked_at IS NULL
           RETURNING true""",
        device_id,
        tenant_id,
        token_hash,
    )
    return bool(updated)


async def resolve_token(conn: Connection, token_hash: bytes) -> asyncpg.Record | None:
    """The live device holding this token, marking it seen in the same statement.

    Also returns its desired state, so a device's pull is this one statement.
    """
    return await conn.fetchrow(
        """UPDATE device_state s SET last_seen = now()
           FROM devices d
           WHERE d.token_hash = $1 AND d.revoked_at IS NULL AND s.device_id = d.device_id
           RETURNING d.device_id, d.tenant_id, s.desired_state, s.desired_version""",
        token_hash,
    )


async def live_belongs(conn: Connection, *, tenant_id: str, device_id: str) -> bool:
    return bool(
        await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM devices
               WHERE device_id = $1 AND tenant_id = $2 AND revoked_at IS NULL)""",
            device_id,
            tenant_id,
        )
    )


async def get_profile(conn: Connection, *, tenant_id: str, device_id: str) -> asyncpg.Record | None:
    """A live device's summary columns and its model id."""
    return await conn.fetchrow(
        f"""SELECT {_LIST_COLUMNS}, d.model_id
            FROM devices d JOIN device_state s USING (device_id)
            WHERE d.device_id = $1 AND d.tenant_id = $2 AND d.revoked_at IS NULL""",  # noqa: S608
        device_id,
        tenant_id,
    )


async def update_profile(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    name: str | None,
    set_tags: dict[str, str],
    remove_tags: list[str],
    model_id: str | None,
    change_model: bool,
) -> int | None:
    """Rename, merge tags (removals, then additions) and set or clear the model, in one
    statement so concurrent edits of different tags never lose each other.

    Returns the number of tags the device has afterwards, or None when it is not live.
    """
    count: int | None = await conn.fetchval(
        """UPDATE devices
           SET name = COALESCE($3, name),
               tags = (tags - $5::text[]) || $4::jsonb,
               model_id = CASE WHEN $7 THEN $6 ELSE model_id END
           WHERE device_id = $1 AND tenant_id = $2 AND revoked_at IS NULL
           RETURNING (SELECT count(*) FROM jsonb_object_keys(tags))""",
        device_id,
        tenant_id,
        name,
        set_tags,
        remove_tags,
        model_id,
        change_model,
    )
    return count
