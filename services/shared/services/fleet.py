"""Fleet operations: the status summary and bulk desired jobs.

A bulk job writes its devices in batches through :mod:`shared.services.bulk_desired`, the
batch twin of a single ``PATCH .../twin/desired`` built on the same ``shared.twin`` rules, so
versions, metadata, history and schema checks are the same for one device or a hundred
thousand; the MQTT publish follows by itself (the desired-version trigger wakes the publisher).

Exactly once, across crashes and replicas: the job's device set is recorded first; then each
batch locks its devices' job rows (``FOR UPDATE SKIP LOCKED``, so concurrent runners take
disjoint batches), writes the twins and records each outcome in one transaction. A crash rolls
back the writes and the outcomes together; the next runner finds those devices still to do.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared import db, twin
from shared.aio import raise_if_cancelled, wait_event
from shared.db import Connection
from shared.errors import DomainError, NotFound, Unprocessable, raise_if_refused
from shared.mqtt import backoff_delays
from shared.repositories import fleet as fleet_repo
from shared.repositories.devices import DeviceFilter
from shared.services import bulk_desired, devices
from shared.services.history import Actor

log = logging.getLogger(__name__)

BATCH_SIZE = 500
WORKERS = 4
MAX_DEVICE_IDS = 10_000
JOB_RETENTION = timedelta(days=30)
_POLL_INTERVAL_S = 5.0
_RETENTION_INTERVAL_S = 3600.0
_FILTER_KEYS = frozenset({"device_ids", "tag", "sync_status", "model_id", "q"})


# --- summary -------------------------------------------------------------------------------


async def summary(conn: Connection, *, tenant_id: str, stale_after: timedelta) -> dict[str, int]:
    row = await fleet_repo.summary(conn, tenant_id=tenant_id, stale_after=stale_after)
    total, stale, pending = row["total"], row["stale"], row["pending"]
    rejected = row["rejected"]
    return {
        "total": total,
        "synced": total - stale - pending,
        "pending": pending - rejected,
        "stale": stale,
        "rejected": rejected,
        "connected": row["connected"],
    }


# --- job requests --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobRequest:
    filter_document: dict[str, Any]
    patch: dict[str, Any]


def _tags_from(value: Any) -> dict[str, str]:
    """``"key:value"``, a list of those, or a ``{key: value}`` object."""
    if isinstance(value, str):
        return devices.parse_tag_filters([value])
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return devices.parse_tag_filters(value)
    if isinstance(value, dict) and all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
    ):
        return devices.parse_tag_filters([f"{k}:{v}" for k, v in value.items()])
    raise Unprocessable("filter.tag must be 'key:value', a list of them, or {key: value}")


def _optional_str(document: dict[str, Any], key: str) -> str | None:
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise Unprocessable(f"filter.{key} must be a string")
    return value


def filter_from_document(document: dict[str, Any]) -> DeviceFilter:
    """A stored or requested filter object, validated (422 for anything malformed)."""
    unknown = set(document) - _FILTER_KEYS
    if unknown:
        raise Unprocessable(
            f"unknown filter keys: {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(_FILTER_KEYS))}"
        )
    device_ids = document.get("device_ids")
    if device_ids is not None:
        if not isinstance(device_ids, list) or not all(isinstance(d, str) for d in device_ids):
            raise Unprocessable("filter.device_ids must be a list of device ids")
        if len(device_ids) > MAX_DEVICE_IDS:
            raise Unprocessable(f"filter.device_ids holds more than {MAX_DEVICE_IDS} ids")
    tag = document.get("tag")
    return devices.device_filter(
        sync_status=_optional_str(document, "sync_status"),
        tags=_tags_from(tag) if tag is not None else None,
        model_id=_optional_str(document, "model_id"),
        text=_optional_str(document, "q"),
        device_ids=device_ids,
    )


def parse_job_request(body: Any, limits: twin.Limits) -> JobRequest:
    """``{"filter": {...}, "desired": {...}}``, checked before anything is queued."""
    if not isinstance(body, dict):
        raise Unprocessable('body must be {"filter": {...}, "desired": {...}}')
    unknown = set(body) - {"filter", "desired"}
    if unknown:
        raise Unprocessable(f"unknown keys: {', '.join(sorted(unknown))}")
    filter_document, patch = body.get("filter"), body.get("desired")
    if not isinstance(filter_document, dict):
        raise Unprocessable("'filter' must be an object (an empty one matches every device)")
    if not isinstance(patch, dict):
        raise Unprocessable("'desired' must be an object: a JSON merge patch")
    filter_from_document(filter_document)
    raise_if_refused(twin.limits_refusal(patch, limits, what="desired patch"))
    return JobRequest(filter_document, patch)


async def create_job(
    conn: Connection, *, tenant_id: str, request: JobRequest, created_by: str
) -> str:
    job_id = await fleet_repo.insert_job(
        conn,
        tenant_id=tenant_id,
        filter_document=request.filter_document,
        patch=request.patch,
        created_by=created_by,
    )
    return str(job_id)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_job_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError as exc:
        raise NotFound(f"job {job_id!r} not found") from exc


async def _job_document(
    conn: Connection, row: asyncpg.Record, *, count_synced: bool = True
) -> dict[str, Any]:
    synced = await fleet_repo.synced_count(conn, job_id=row["job_id"]) if count_synced else None
    return {
        "job_id": str(row["job_id"]),
        "status": row["status"],
        "matched": row["matched"] or 0,
        "written": row["written"],
        "synced": synced,
        "skipped": row["skipped"],
        "failed": row["failed"],
        "error": row["error"],
        "filter": row["filter"],
        "desired": row["patch"],
        "created_by": row["created_by"],
        "created_at": _iso(row["created_at"]),
        "finished_at": _iso(row["finished_at"]),
    }


async def get_job(
    conn: Connection, *, tenant_id: str, job_id: str, count_synced: bool = True
) -> dict[str, Any]:
    """The job's progress; ``synced`` (a join over its devices) only when asked for."""
    row = await fleet_repo.get_job(conn, tenant_id=tenant_id, job_id=_parse_job_id(job_id))
    if row is None:
        raise NotFound(f"job {job_id!r} not found")
    return await _job_document(conn, row, count_synced=count_synced)


async def recent_jobs(conn: Connection, *, tenant_id: str, limit: int) -> dict[str, Any]:
    rows = await fleet_repo.recent_jobs(conn, tenant_id=tenant_id, limit=limit)
    return {"items": [await _job_document(conn, row) for row in rows]}


# --- running jobs --------------------------------------------------------------------------


async def run_step(
    pool: asyncpg.Pool,
    *,
    limits: twin.Limits,
    stale_after: timedelta,
    batch_size: int = BATCH_SIZE,
    only_job: str | None = None,
) -> bool:
    """Advance some running job by one step; False when there is nothing to do right now."""
    async with db.transaction(pool) as conn:
        job = await fleet_repo.claim_unmatched(
            conn, job_id=uuid.UUID(only_job) if only_job is not None else None
        )
        if job is not None:
            try:
                device_filter = filter_from_document(job["filter"])
            except DomainError as exc:  # stored before a rule changed: fail it, do not loop
                await fleet_repo.fail_job(conn, job_id=job["job_id"], error=str(exc.detail))
                return True
            await fleet_repo.record_matches(
                conn,
                job_id=job["job_id"],
                tenant_id=job["tenant_id"],
                device_filter=device_filter,
                stale_after=stale_after,
            )
            return True
    async with pool.acquire() as conn:
        jobs = await fleet_repo.running_jobs(conn)
    for job in jobs:
        if only_job is not None and str(job["job_id"]) != only_job:
            continue
        async with db.transaction(pool) as conn:
            device_ids = await fleet_repo.claim_devices(
                conn, job_id=job["job_id"], limit=batch_size
            )
            if device_ids:
                outcomes = await bulk_desired.patch_desired_many(
                    conn,
                    tenant_id=job["tenant_id"],
                    device_ids=device_ids,
                    patch=job["patch"],
                    limits=limits,
                    actor=Actor.user(job["created_by"]),
                )
                await fleet_repo.record_outcomes(
                    conn,
                    job_id=job["job_id"],
                    device_ids=device_ids,
                    outcomes=[outcomes[d].outcome for d in device_ids],
                    versions=[outcomes[d].version for d in device_ids],
                    errors=[outcomes[d].error for d in device_ids],
                )
                return True
        async with db.transaction(pool) as conn:
            if await fleet_repo.finish_if_complete(conn, job_id=job["job_id"]):
                return True
    return False


class JobRunner:
    """Runs the database's bulk jobs: woken by LISTEN, and polling as a safety net.

    Any number of runners (ui_iot replicas, a CLI) may work at once; the row locks above keep
    their batches disjoint. A job left running by a crashed process is simply picked up.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        database_url: str,
        *,
        limits: twin.Limits,
        stale_after: timedelta,
        workers: int = WORKERS,
    ) -> None:
        self._pool = pool
        self._database_url = database_url
        self._limits = limits
        self._stale_after = stale_after
        self._workers = workers
        self._wake = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._listen(), name="fleet-jobs-listen")
            tasks.create_task(self._retain(), name="fleet-jobs-retention")
            for number in range(self._workers):
                tasks.create_task(self._work(), name=f"fleet-jobs-worker-{number}")

    async def _listen(self) -> None:
        next_delay = backoff_delays()
        while True:
            try:
                conn = await db.connect(self._database_url, application_name="ui_iot-fleet-jobs")
                try:
                    await conn.add_listener("iot_fleet_job", lambda *_: self._wake.set())
                    self._wake.set()  # anything queued while we were not listening
                    next_delay = backoff_delays()
                    while True:
                        await asyncio.sleep(_POLL_INTERVAL_S)
                        await conn.fetchval("SELECT 1")  # notice a dead LISTEN connection
                finally:
                    conn.terminate()
            except db.RETRYABLE_ERRORS as exc:
                log.warning("fleet job listener lost the database: %r", exc)
            except Exception:
                raise_if_cancelled()
                log.exception("fleet job listener failed unexpectedly, restarting it")
            await asyncio.sleep(next_delay())

    async def _retain(self) -> None:
        """Finished jobs (with their per-device rows) are kept for JOB_RETENTION."""
        while True:
            try:
                while True:
                    async with self._pool.acquire() as conn:
                        if not await fleet_repo.delete_finished_before(
                            conn, age=JOB_RETENTION, limit=1
                        ):
                            break
            except db.RETRYABLE_ERRORS as exc:  # the database away for a while: no traceback
                log.warning("fleet job retention lost the database; trying again later: %r", exc)
            except Exception:
                raise_if_cancelled()
                log.exception("fleet job retention failed; trying again later")
            await asyncio.sleep(_RETENTION_INTERVAL_S)

    async def _work(self) -> None:
        next_delay = backoff_delays()
        while True:
            await wait_event(self._wake, _POLL_INTERVAL_S)
            self._wake.clear()
            try:
                while await run_step(
                    self._pool, limits=self._limits, stale_after=self._stale_after
                ):
                    self._wake.set()  # more to do: bring the idle workers in
                next_delay = backoff_delays()
            except db.RETRYABLE_ERRORS as exc:
                log.warning("fleet job step failed, retrying: %r", exc)
                await asyncio.sleep(next_delay())
            except Exception:
                raise_if_cancelled()
                # A bug must not take the whole app down with this task group: log, back off.
                log.exception("fleet job step failed unexpectedly, retrying")
                await asyncio.sleep(next_delay())


async def run_to_completion(
    pool: asyncpg.Pool,
    job_id: str,
    *,
    limits: twin.Limits,
    stale_after: timedelta,
    tenant_id: str,
    on_progress: Callable[[dict[str, Any]], None],
    workers: int = WORKERS,
    batch_size: int = BATCH_SIZE,
) -> dict[str, Any]:
    """Run one job in this process (the CLI) until it is no longer running."""

    async def report(*, final: bool = False) -> dict[str, Any]:
        async with pool.acquire() as conn:
            document = await get_job(conn, tenant_id=tenant_id, job_id=job_id, count_synced=final)
        on_progress(document)
        return document

    async def work() -> None:
        while await run_step(
            pool, limits=limits, stale_after=stale_after, batch_size=batch_size, only_job=job_id
        ):
            pass

    while True:
        async with asyncio.TaskGroup() as tasks:
            running = [
                tasks.create_task(work(), name=f"fleet-job-{number}") for number in range(workers)
            ]
            while not all(task.done() for task in running):
                await report()
                await asyncio.sleep(0.2)
        document = await report(final=True)
        if document["status"] != "running":
            return document
        # Another runner still holds the last batches: wait for it to finish them.
        await asyncio.sleep(0.5)
