"""Fleet-wide reads (the summary) and the bulk desired jobs' tables."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared.db import Connection
from shared.repositories.devices import DeviceFilter, filter_sql

_JOB_COLUMNS = """job_id, tenant_id, filter, patch, created_by, status, matched, written,
       skipped, failed, error, created_at, updated_at, finished_at"""


async def summary(conn: Connection, *, tenant_id: str, stale_after: timedelta) -> asyncpg.Record:
    """Counts by sync status in one statement, so one snapshot: the tenant's device and
    pending counts as kept by triggers (migrations 008 and 010), the stale devices and the
    pending ones among them as index-only ranges (``idx_device_state_last_seen``,
    ``idx_device_state_pending_last_seen``). The cost grows with the stale devices, not with
    the fleet; pending is the kept count less the stale ones, synced what is left. The
    connected devices are a kept count too (migration 012)."""
    row = await conn.fetchrow(
        """SELECT kept.total, kept.pending - stale_pending.n AS pending, stale.n AS stale,
                  kept.connected, rejected.n AS rejected
           FROM (SELECT COALESCE(sum(devices), 0)::bigint AS total,
                        COALESCE(sum(pending), 0)::bigint AS pending,
                        COALESCE(sum(connected), 0)::bigint AS connected
                 FROM tenant_device_counts WHERE tenant_id = $1) AS kept,
                -- twin_has_sync_status('stale', ...) split in its two halves, each an
                -- index-only range: the OR as one condition is a bitmap scan that reads the
                -- heap.
                (SELECT (SELECT count(*) FROM device_state
                         WHERE tenant_id = $1 AND last_seen IS NULL)
                        + (SELECT count(*) FROM device_state
                           WHERE tenant_id = $1 AND last_seen < now() - $2::interval) AS n
                ) AS stale,
                (SELECT (SELECT count(*) FROM device_state
                         WHERE tenant_id = $1 AND last_seen IS NULL
                           AND twin_awaits_report(desired_version, reported_version))
                        + (SELECT count(*) FROM device_state
                           WHERE tenant_id = $1 AND last_seen < now() - $2::interval
                             AND twin_awaits_report(desired_version, reported_version)) AS n
                ) AS stale_pending,
                -- Refusals in effect (migration 018), a range of idx_device_state_rejected;
                -- pending by the version rule, so the service takes them out of pending.
                (SELECT count(*) AS n FROM device_state
                 WHERE tenant_id = $1 AND rejected_version IS NOT NULL
                   AND rejected_version > reported_version
                   AND last_seen >= now() - $2::interval) AS rejected""",
        tenant_id,
        stale_after,
    )
    assert row is not None
    return row


# --- jobs ------------------------------------------------------------------------------------


async def insert_job(
    conn: Connection,
    *,
    tenant_id: str,
    filter_document: dict[str, Any],
    patch: dict[str, Any],
    created_by: str,
) -> uuid.UUID:
    job_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO fleet_jobs (job_id, tenant_id, filter, patch, created_by)
           VALUES ($1, $2, $3, $4, $5)""",
        job_id,
        tenant_id,
        filter_document,
        patch,
        created_by,
    )
    return job_id


async def get_job(conn: Connection, *, tenant_id: str, job_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_JOB_COLUMNS} FROM fleet_jobs WHERE job_id = $1 AND tenant_id = $2",  # noqa: S608
        job_id,
        tenant_id,
    )


async def recent_jobs(conn: Connection, *, tenant_id: str, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_JOB_COLUMNS} FROM fleet_jobs WHERE tenant_id = $1
            ORDER BY created_at DESC LIMIT $2""",  # noqa: S608
        tenant_id,
        limit,
    )


async def synced_count(conn: Connection, *, job_id: uuid.UUID) -> int:
    """Devices that have reported the version this job wrote to them (or a later one)."""
    count: int = await conn.fetchval(
        """SELECT count(*) FROM fleet_job_devices j
           JOIN device_state s ON s.device_id = j.device_id
           WHERE j.job_id = $1 AND j.outcome = 'written' AND s.reported_version >= j.version""",
        job_id,
    )
    return count


async def claim_unmatched(conn: Connection, *, job_id: uuid.UUID | None) -> asyncpg.Record | None:
    """A running job (any, or this one) whose device set is not recorded yet, locked so that
    one runner records it."""
    return await conn.fetchrow(
        f"""SELECT {_JOB_COLUMNS} FROM fleet_jobs
            WHERE status = 'running' AND matched IS NULL AND ($1::uuid IS NULL OR job_id = $1)
            ORDER BY created_at
            LIMIT 1
            FOR UPDATE SKIP LOCKED""",  # noqa: S608
        job_id,
    )


async def record_matches(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    tenant_id: str,
    device_filter: DeviceFilter,
    stale_after: timedelta,
) -> int:
    """Fix the job's device set: the devices its filter matches now."""
    params: list[Any] = [job_id]
    where = filter_sql(device_filter, tenant_id=tenant_id, stale_after=stale_after, params=params)
    matched: int = await conn.fetchval(
        f"""WITH matched AS (
                INSERT INTO fleet_job_devices (job_id, device_id)
                SELECT $1, d.device_id
                FROM devices d JOIN device_state s ON s.device_id = d.device_id
                WHERE {where}
                ON CONFLICT DO NOTHING
                RETURNING 1)
            UPDATE fleet_jobs SET matched = (SELECT count(*) FROM matched), updated_at = now()
            WHERE job_id = $1
            RETURNING matched""",  # noqa: S608 - only fixed fragments are interpolated
        *params,
    )
    return matched


async def fail_job(conn: Connection, *, job_id: uuid.UUID, error: str) -> None:
    await conn.execute(
        """UPDATE fleet_jobs
           SET status = 'failed', matched = COALESCE(matched, 0), error = $2,
               finished_at = now(), updated_at = now()
           WHERE job_id = $1""",
        job_id,
        error,
    )


async def delete_finished_before(conn: Connection, *, age: timedelta, limit: int) -> int:
    """Retention: drop up to ``limit`` jobs finished longer ago than ``age`` (and, by cascade,
    their device rows)."""
    deleted: int = await conn.fetchval(
        """WITH gone AS (
               DELETE FROM fleet_jobs
               WHERE job_id IN (SELECT job_id FROM fleet_jobs
                                WHERE status <> 'running' AND finished_at < now() - $1::interval
                                ORDER BY finished_at
                                LIMIT $2)
               RETURNING 1)
           SELECT count(*) FROM gone""",
        age,
        limit,
    )
    return deleted


async def running_jobs(conn: Connection) -> list[asyncpg.Record]:
    """Running jobs with a recorded device set, least recently advanced first (round robin)."""
    return await conn.fetch(
        f"""SELECT {_JOB_COLUMNS} FROM fleet_jobs
            WHERE status = 'running' AND matched IS NOT NULL
            ORDER BY updated_at
            LIMIT 50"""  # noqa: S608
    )


async def claim_devices(conn: Connection, *, job_id: uuid.UUID, limit: int) -> list[str]:
    """The next devices still to do, locked for this transaction; other runners skip them,
    so each device is written by exactly one runner, once."""
    rows = await conn.fetch(
        """SELECT device_id FROM fleet_job_devices
           WHERE job_id = $1 AND outcome IS NULL
           ORDER BY device_id
           LIMIT $2
           FOR UPDATE SKIP LOCKED""",
        job_id,
        limit,
    )
    return [row["device_id"] for row in rows]


async def record_outcomes(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    device_ids: list[str],
    outcomes: list[str],
    versions: list[int | None],
    errors: list[str | None],
) -> None:
    await conn.execute(
        """UPDATE fleet_job_devices j
           SET outcome = o.outcome, version = o.version, error = o.error
           FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[])
                AS o (device_id, outcome, version, error)
           WHERE j.job_id = $1 AND j.device_id = o.device_id""",
        job_id,
        device_ids,
        outcomes,
        versions,
        errors,
    )
    written = outcomes.count("written")
    skipped = outcomes.count("skipped")
    failed = outcomes.count("failed")
    first_error = next((error for error in errors if error), None)
    await conn.execute(
        """UPDATE fleet_jobs
           SET written = written + $2, skipped = skipped + $3, failed = failed + $4,
               error = COALESCE(error, $5), updated_at = now()
           WHERE job_id = $1""",
        job_id,
        written,
        skipped,
        failed,
        first_error,
    )


async def finish_if_complete(conn: Connection, *, job_id: uuid.UUID) -> bool:
    """Close the job once no device is left to do: 'failed' if any write was refused."""
    finished = await conn.fetchval(
        """UPDATE fleet_jobs
           SET status = CASE WHEN failed > 0 THEN 'failed' ELSE 'done' END,
               finished_at = now(), updated_at = now()
           WHERE job_id = $1 AND status = 'running' AND matched IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM fleet_job_devices
                             WHERE job_id = $1 AND outcome IS NULL)
           RETURNING true""",
        job_id,
    )
    return bool(finished)


# --- batch desired writes (shared.services.bulk_desired) -------------------------------------


async def lock_twins(
    conn: Connection, *, tenant_id: str, device_ids: list[str]
) -> list[asyncpg.Record]:
    """The live twins among ``device_ids``, locked in id order (as single writes lock one),
    with each device's model and the transaction clock that stamps metadata and history."""
    return await conn.fetch(
        """SELECT s.device_id, s.desired_state, s.desired_metadata, s.desired_version,
                  s.reported_state, s.reported_metadata, s.document_version,
                  d.model_id, now() AS now
           FROM device_state s JOIN devices d ON d.device_id = s.device_id
           WHERE s.tenant_id = $1 AND s.device_id = ANY($2::text[])
           ORDER BY s.device_id
           FOR UPDATE OF s""",
        tenant_id,
        device_ids,
    )


async def write_desired_many(
    conn: Connection,
    *,
    device_ids: list[str],
    desired: list[dict[str, Any]],
    metadata: list[dict[str, Any]],
    versions: list[int],
) -> None:
    await conn.execute(
        """UPDATE device_state s
           SET desired_state = w.desired, desired_metadata = w.metadata,
               desired_version = w.version, shadow_updated_at = now(),
               document_version = document_version + 1
           FROM unnest($1::text[], $2::jsonb[], $3::jsonb[], $4::bigint[])
                AS w (device_id, desired, metadata, version)
           WHERE s.device_id = w.device_id""",
        device_ids,
        desired,
        metadata,
        versions,
    )


async def record_desired_history(
    conn: Connection,
    *,
    tenant_id: str,
    device_ids: list[str],
    versions: list[int],
    patch: dict[str, Any],
    actor_type: str,
    actor_email: str | None,
    at: datetime,
    actor_id: str | None = None,
) -> None:
    """One twin_history row per written device, as shared.services.history.record writes."""
    await conn.execute(
        """INSERT INTO twin_history
               (tenant_id, device_id, kind, actor_type, actor_email, version, patch, at,
                actor_id)
           SELECT $1, w.device_id, 'desired', $4, $5, w.version, $6, $7, $8
           FROM unnest($2::text[], $3::bigint[]) AS w (device_id, version)
           ORDER BY w.device_id""",
        tenant_id,
        device_ids,
        versions,
        actor_type,
        actor_email,
        patch,
        at,
        actor_id,
    )
