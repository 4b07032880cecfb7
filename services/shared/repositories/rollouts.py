"""SQL of staged rollouts (``shared.services.rollouts``, migration 018)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg

from shared.db import Connection
from shared.repositories.devices import DeviceFilter, filter_sql

_COLUMNS = """rollout_id, tenant_id, filter, patch, stages, stage_ends, success, on_failure,
       state, stage, stage_written_at, matched, reason, created_by, created_at, updated_at,
       finished_at"""

ACTIVE_STATES = ("running", "paused", "reverting")


async def lock_tenant(conn: Connection, *, tenant_id: str) -> None:
    """Serialise rollout creation within a tenant, so two overlapping ones cannot both start."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('iotcloud-rollouts:' || $1, 0))",
        tenant_id,
    )


async def count_matches(
    conn: Connection, *, tenant_id: str, device_filter: DeviceFilter, stale_after: timedelta
) -> int:
    params: list[Any] = []
    where = filter_sql(device_filter, tenant_id=tenant_id, stale_after=stale_after, params=params)
    count: int = await conn.fetchval(
        f"""SELECT count(*) FROM devices d JOIN device_state s ON s.device_id = d.device_id
            WHERE {where}""",  # noqa: S608 - only fixed fragments are interpolated
        *params,
    )
    return count


async def insert(
    conn: Connection,
    *,
    rollout_id: uuid.UUID,
    tenant_id: str,
    filter_document: dict[str, Any],
    patch: dict[str, Any],
    stages: list[Any],
    stage_ends: list[int],
    success: dict[str, Any],
    on_failure: str,
    created_by: str,
    device_filter: DeviceFilter,
    stale_after: timedelta,
) -> int:
    """The rollout and its devices: the filter's matches in a stable random order (md5 of
    the rollout id and the device id), each placed in the first stage whose end covers its
    position; positions past the last stage's end are left out. Returns the devices placed."""
    await conn.execute(
        """INSERT INTO rollouts (rollout_id, tenant_id, filter, patch, stages, stage_ends,
                                 success, on_failure, created_by, matched)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0)""",
        rollout_id,
        tenant_id,
        filter_document,
        patch,
        stages,
        stage_ends,
        success,
        on_failure,
        created_by,
    )
    params: list[Any] = [rollout_id, stage_ends]
    where = filter_sql(device_filter, tenant_id=tenant_id, stale_after=stale_after, params=params)
    placed: int = await conn.fetchval(
        f"""WITH ordered AS (
                SELECT d.device_id,
                       row_number() OVER (ORDER BY md5($1::uuid::text || d.device_id), d.device_id)
                           AS position
                FROM devices d JOIN device_state s ON s.device_id = d.device_id
                WHERE {where}),
            placed AS (
                INSERT INTO rollout_devices (rollout_id, device_id, position, stage)
                SELECT $1::uuid, o.device_id, o.position,
                       (SELECT count(*) FROM unnest($2::bigint[]) AS e (last)
                        WHERE e.last < o.position)
                FROM ordered o
                WHERE o.position <= $2[array_length($2::bigint[], 1)]
                RETURNING 1)
            UPDATE rollouts SET matched = (SELECT count(*) FROM placed)
            WHERE rollout_id = $1::uuid
            RETURNING matched""",  # noqa: S608 - only fixed fragments are interpolated
        *params,
    )
    return placed


async def overlapping(
    conn: Connection, *, tenant_id: str, rollout_id: uuid.UUID, candidates: list[uuid.UUID]
) -> uuid.UUID | None:
    """The first of ``candidates`` (active rollouts whose keys overlap) sharing a device."""
    if not candidates:
        return None
    found: uuid.UUID | None = await conn.fetchval(
        """SELECT r.rollout_id FROM rollouts r
           WHERE r.tenant_id = $1 AND r.rollout_id = ANY($3::uuid[])
             AND EXISTS (SELECT 1 FROM rollout_devices a
                         JOIN rollout_devices b ON b.device_id = a.device_id
                         WHERE a.rollout_id = r.rollout_id AND b.rollout_id = $2)
           ORDER BY r.created_at
           LIMIT 1""",
        tenant_id,
        rollout_id,
        candidates,
    )
    return found


async def active(conn: Connection, *, tenant_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_COLUMNS} FROM rollouts
            WHERE tenant_id = $1 AND state = ANY($2::text[])""",  # noqa: S608
        tenant_id,
        list(ACTIVE_STATES),
    )


async def get(
    conn: Connection, *, tenant_id: str, rollout_id: uuid.UUID, lock: bool = False
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM rollouts WHERE rollout_id = $1 AND tenant_id = $2
            {"FOR UPDATE" if lock else ""}""",  # noqa: S608
        rollout_id,
        tenant_id,
    )


async def recent(conn: Connection, *, tenant_id: str, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_COLUMNS} FROM rollouts WHERE tenant_id = $1
            ORDER BY created_at DESC LIMIT $2""",  # noqa: S608
        tenant_id,
        limit,
    )


async def runnable_ids(conn: Connection) -> list[uuid.UUID]:
    rows = await conn.fetch(
        """SELECT rollout_id FROM rollouts WHERE state IN ('running', 'reverting')
           ORDER BY created_at"""
    )
    return [row["rollout_id"] for row in rows]


async def claim(conn: Connection, *, rollout_id: uuid.UUID) -> asyncpg.Record | None:
    """The rollout, locked for one step, if it is still runnable and no one else holds it:
    every write of a rollout happens under this lock, so no device is written twice."""
    return await conn.fetchrow(
        f"""SELECT {_COLUMNS}, now() AS now FROM rollouts
            WHERE rollout_id = $1 AND state IN ('running', 'reverting')
            FOR UPDATE SKIP LOCKED""",  # noqa: S608
        rollout_id,
    )


async def unwritten(
    conn: Connection, *, rollout_id: uuid.UUID, stage: int, limit: int
) -> list[str]:
    rows = await conn.fetch(
        """SELECT device_id FROM rollout_devices
           WHERE rollout_id = $1 AND stage = $2 AND outcome IS NULL
           ORDER BY device_id
           LIMIT $3""",
        rollout_id,
        stage,
        limit,
    )
    return [row["device_id"] for row in rows]


async def desired_states(
    conn: Connection, *, tenant_id: str, device_ids: list[str]
) -> dict[str, dict[str, Any]]:
    """The desired state of these twins, locked (in id order) for the write that follows."""
    rows = await conn.fetch(
        """SELECT device_id, desired_state FROM device_state
           WHERE tenant_id = $1 AND device_id = ANY($2::text[])
           ORDER BY device_id
           FOR UPDATE""",
        tenant_id,
        device_ids,
    )
    return {row["device_id"]: row["desired_state"] for row in rows}


async def record_writes(
    conn: Connection,
    *,
    rollout_id: uuid.UUID,
    device_ids: list[str],
    outcomes: list[str],
    versions: list[int | None],
    reverts: list[dict[str, Any] | None],
    errors: list[str | None],
) -> None:
    await conn.execute(
        """UPDATE rollout_devices r
           SET outcome = w.outcome, version = w.version, revert = w.revert, error = w.error
           FROM unnest($2::text[], $3::text[], $4::bigint[], $5::jsonb[], $6::text[])
                AS w (device_id, outcome, version, revert, error)
           WHERE r.rollout_id = $1 AND r.device_id = w.device_id""",
        rollout_id,
        device_ids,
        outcomes,
        versions,
        reverts,
        errors,
    )


async def unreverted(
    conn: Connection, *, rollout_id: uuid.UUID, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT device_id, revert FROM rollout_devices
           WHERE rollout_id = $1 AND outcome = 'written' AND NOT reverted
           ORDER BY device_id
           LIMIT $2""",
        rollout_id,
        limit,
    )


async def record_reverts(
    conn: Connection, *, rollout_id: uuid.UUID, device_ids: list[str], versions: list[int | None]
) -> None:
    await conn.execute(
        """UPDATE rollout_devices r SET reverted = true, revert_version = w.version
           FROM unnest($2::text[], $3::bigint[]) AS w (device_id, version)
           WHERE r.rollout_id = $1 AND r.device_id = w.device_id""",
        rollout_id,
        device_ids,
        versions,
    )


# Health operators as SQL over the jsonb value ``v`` and the condition's value ``$3``; the
# operator is one of these fixed keys (checked before it gets here), never request text.
_HEALTH_SQL = {
    "==": "v = $3::jsonb",
    "!=": "v <> $3::jsonb",
    "<": "jsonb_typeof(v) = jsonb_typeof($3::jsonb) AND v < $3::jsonb",
    "<=": "jsonb_typeof(v) = jsonb_typeof($3::jsonb) AND v <= $3::jsonb",
    ">": "jsonb_typeof(v) = jsonb_typeof($3::jsonb) AND v > $3::jsonb",
    ">=": "jsonb_typeof(v) = jsonb_typeof($3::jsonb) AND v >= $3::jsonb",
    "in": "EXISTS (SELECT 1 FROM jsonb_array_elements($3::jsonb) AS x (e) WHERE x.e = v)",
}


async def stage_counts(
    conn: Connection,
    *,
    rollout_id: uuid.UUID,
    health: tuple[str, list[str], str, Any] | None,
) -> list[asyncpg.Record]:
    """Per stage: devices, written, synced (applied the version it was given), rejected (a
    refusal in effect of that version or a later one), unhealthy (applied, but the health
    condition does not hold; a missing value does not hold), good (synced, not rejected and
    healthy: what the gate counts) and reverted.

    ``health``: (``reported`` or ``desired``, the pointer's path, the operator, the value).
    """
    args: list[Any] = [rollout_id]
    healthy = "true"
    if health is not None:
        side, path, op, value = health
        column = "s.reported_state" if side == "reported" else "s.desired_state"
        healthy = (
            f"COALESCE((SELECT {_HEALTH_SQL[op]} FROM (SELECT {column} #> $2::text[]) AS h (v)),"  # noqa: S608 - fixed fragments
            " false)"
        )
        args += [path, value]
    return await conn.fetch(
        f"""SELECT r.stage, count(*) AS devices,
                   count(*) FILTER (WHERE r.outcome = 'written') AS written,
                   count(*) FILTER (WHERE r.outcome IN ('skipped', 'failed')) AS not_written,
                   count(*) FILTER (WHERE r.outcome = 'failed') AS failed,
                   count(*) FILTER (WHERE r.outcome = 'written' AND synced) AS synced,
                   count(*) FILTER (WHERE r.outcome = 'written' AND rejected) AS rejected,
                   count(*) FILTER (WHERE r.outcome = 'written' AND synced AND NOT healthy)
                       AS unhealthy,
                   count(*) FILTER (WHERE r.outcome = 'written' AND synced AND NOT rejected
                                      AND healthy) AS good,
                   count(*) FILTER (WHERE r.reverted) AS reverted
            FROM rollout_devices r
            LEFT JOIN LATERAL (
                SELECT s.reported_version >= r.version AS synced,
                       COALESCE(s.rejected_version >= r.version
                                AND s.rejected_version > s.reported_version, false) AS rejected,
                       {healthy} AS healthy
                FROM device_state s WHERE s.device_id = r.device_id
            ) AS t ON true
            WHERE r.rollout_id = $1
            GROUP BY r.stage
            ORDER BY r.stage""",  # noqa: S608 - only fixed fragments are interpolated
        *args,
    )


async def update_state(
    conn: Connection,
    *,
    rollout_id: uuid.UUID,
    state: str,
    stage: int | None = None,
    reason: str | None = None,
    finished: bool = False,
    clear_written_at: bool = False,
) -> None:
    await conn.execute(
        """UPDATE rollouts
           SET state = $2, stage = COALESCE($3, stage),
               reason = CASE WHEN $6 THEN $4 ELSE COALESCE($4, reason) END,
               finished_at = CASE WHEN $5 THEN now() ELSE finished_at END,
               stage_written_at = CASE WHEN $6 THEN NULL ELSE stage_written_at END,
               updated_at = now()
           WHERE rollout_id = $1""",
        rollout_id,
        state,
        stage,
        reason,
        finished,
        clear_written_at,
    )


async def mark_stage_written(conn: Connection, *, rollout_id: uuid.UUID) -> None:
    await conn.execute(
        """UPDATE rollouts SET stage_written_at = now(), updated_at = now()
           WHERE rollout_id = $1""",
        rollout_id,
    )


async def gate_expired(conn: Connection, *, rollout_id: uuid.UUID, within_s: float) -> bool:
    expired: bool = await conn.fetchval(
        """SELECT stage_written_at + make_interval(secs => $2) < now() FROM rollouts
           WHERE rollout_id = $1""",
        rollout_id,
        within_s,
    )
    return expired
