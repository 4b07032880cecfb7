"""Changing a model's schemas (SPEC §8): checked against its devices by a background job.

``PUT /customer/models/{id}`` records the change and answers 202 at once; a worker in every
``ui_iot`` checks the current desired state of the model's devices a batch per transaction
(progress in the job), and at the end, with the model row locked against desired writes,
checks again the devices whose twin changed meanwhile and applies the schemas — or refuses
the change when any device would break (its desired state is never made invalid). Other
requests run between batches: a model of a million devices stalls nobody.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import asyncpg

from shared import db, twin
from shared.aio import wait_event
from shared.db import Connection
from shared.errors import Conflict, NotFound
from shared.repositories import model_revalidations as jobs_repo
from shared.repositories import models as models_repo
from shared.services import models

log = logging.getLogger(__name__)

BATCH = 200
LISTED_DEVICES = 5
_POLL_S = 1.0


def document(row: asyncpg.Record) -> dict[str, Any]:
    finished = row["finished_at"]
    return {
        "job_id": str(row["job_id"]),
        "model_id": row["model_id"],
        "status": row["status"],
        "total": row["total"],
        "checked": row["checked"],
        "invalid_count": row["invalid_count"],
        "devices": row["devices"],
        "created_by": row["created_by"],
        "created_at": row["created_at"].isoformat(),
        "finished_at": finished.isoformat() if finished else None,
    }


async def start(
    conn: Connection,
    *,
    tenant_id: str,
    model_id: str,
    desired_schema: dict[str, Any],
    reported_schema: dict[str, Any] | None,
    limits: twin.Limits,
    created_by: str,
) -> dict[str, Any]:
    models.check_schemas(desired_schema, reported_schema, limits)
    if await models_repo.get(conn, tenant_id=tenant_id, model_id=model_id) is None:
        raise NotFound(f"model {model_id!r} not found")
    row = await jobs_repo.insert(
        conn,
        tenant_id=tenant_id,
        model_id=model_id,
        desired_schema=desired_schema,
        reported_schema=reported_schema,
        created_by=created_by,
    )
    if row is None:
        raise Conflict(f"a change of model {model_id!r} is being checked; wait for it to finish")
    return document(row)


def parse_job_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise NotFound(f"job {value!r} not found") from exc


async def get(conn: Connection, *, tenant_id: str, model_id: str, job_id: str) -> dict[str, Any]:
    row = await jobs_repo.get(
        conn, tenant_id=tenant_id, model_id=model_id, job_id=parse_job_id(job_id)
    )
    if row is None:
        raise NotFound(f"job {job_id!r} not found")
    return document(row)


def _violations(schema: dict[str, Any], rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    found = []
    for row in rows:
        violations = twin.schema_violations(schema, row["desired_state"])
        if violations:
            found.append(
                {"device_id": row["device_id"], "errors": [v.as_json() for v in violations]}
            )
    return found


class RevalidationRunner:
    """Runs the checks; one per process, any number of processes (jobs are claimed with
    ``SKIP LOCKED``, a batch per transaction)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.wake = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                busy = await self.step()
            except db.RETRYABLE_ERRORS as exc:
                log.warning("model revalidation failed, will retry: %r", exc)
                busy = False
            if busy:
                await asyncio.sleep(0)  # let requests in between batches
                continue
            self.wake.clear()
            await wait_event(self.wake, _POLL_S)

    async def step(self) -> bool:
        """One batch of one job; False when no job is waiting."""
        async with self._pool.acquire() as conn, conn.transaction():
            job = await jobs_repo.claim_running(conn)
            if job is None:
                return False
            schema = job["desired_schema"]
            rows = await models_repo.desired_of_devices(
                conn,
                tenant_id=job["tenant_id"],
                model_id=job["model_id"],
                after=job["after_device"],
                limit=BATCH,
            )
            invalid = _violations(schema, rows)
            listed = [*job["devices"], *invalid][:LISTED_DEVICES]
            invalid_count = job["invalid_count"] + len(invalid)
            await jobs_repo.record_progress(
                conn,
                job_id=job["job_id"],
                checked=job["checked"] + len(rows),
                invalid_count=invalid_count,
                devices=listed,
                after_device=rows[-1]["device_id"] if rows else job["after_device"],
            )
            if len(rows) == BATCH:
                return True
            await self._finish(conn, job, invalid_count, job["checked"] + len(rows))
            return True

    async def _finish(
        self, conn: Connection, job: asyncpg.Record, invalid_count: int, checked: int
    ) -> None:
        tenant_id, model_id = job["tenant_id"], job["model_id"]
        if invalid_count == 0:
            # Desired writes and model assignments of the model's devices wait from here to
            # the commit.
            await models_repo.lock_for_change(conn, tenant_id=tenant_id, model_id=model_id)
            now = await jobs_repo.count_devices(conn, tenant_id=tenant_id, model_id=model_id)
            if now != checked:
                # Devices joined or left the model during the scan: scan again.
                await jobs_repo.restart(conn, job_id=job["job_id"], total=now)
                return
            changed = await jobs_repo.desired_changed_since(
                conn, tenant_id=tenant_id, model_id=model_id, since=job["created_at"]
            )
            late = _violations(job["desired_schema"], changed)
            if late:
                invalid_count = len(late)
                await jobs_repo.record_progress(
                    conn,
                    job_id=job["job_id"],
                    checked=job["total"],
                    invalid_count=invalid_count,
                    devices=late[:LISTED_DEVICES],
                    after_device=job["after_device"],
                )
        if invalid_count:
            await jobs_repo.finish(conn, job_id=job["job_id"], status="refused")
            return
        await models_repo.replace_schemas(
            conn,
            tenant_id=tenant_id,
            model_id=model_id,
            desired_schema=job["desired_schema"],
            reported_schema=job["reported_schema"],
        )
        await jobs_repo.finish(conn, job_id=job["job_id"], status="applied")
