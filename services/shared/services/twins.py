"""Twin reads and writes for both APIs and the MQTT bridge, on top of ``shared.twin``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared import twin
from shared.db import Connection
from shared.errors import NotFound, refusal_error
from shared.repositories import twin_state
from shared.services import history, models
from shared.services.history import Actor

TwinDocument = dict[str, Any]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def twin_document(
    row: asyncpg.Record,
    *,
    stale_after: timedelta,
    model_id: str | None,
    reported_schema: dict[str, Any] | None,
) -> TwinDocument:
    """The operator's view of a twin (SPEC §5 and §8).

    ``reported_schema_errors`` flags reported state that breaks the model's reported schema:
    such reports are accepted (a device must never be locked out) and shown here instead.
    """
    reported_errors = (
        twin.schema_violations(reported_schema, row["reported_state"])
        if reported_schema is not None
        else []
    )
    return {
        "device_id": row["device_id"],
        "tenant_id": row["tenant_id"],
        "desired": row["desired_state"],
        "reported": row["reported_state"],
        "delta": twin.compute_delta(row["desired_state"], row["reported_state"]),
        "desired_version": row["desired_version"],
        "reported_version": row["reported_version"],
        "sync_status": twin.sync_status(
            row["desired_version"],
            row["reported_version"],
            row["last_seen"],
            stale_after=stale_after,
            rejected_version=row["rejected_version"],
        ),
        "rejected": twin.rejected_document(row["rejected"], row["reported_version"]),
        "shadow_updated_at": _iso(row["shadow_updated_at"]),
        "last_seen": _iso(row["last_seen"]),
        "connected": row["connected"],
        "connected_at": _iso(row["connected_at"]),
        "disconnected_at": _iso(row["disconnected_at"]),
        "metadata": {"desired": row["desired_metadata"], "reported": row["reported_metadata"]},
        "model_id": model_id,
        "reported_schema_errors": [violation.as_json() for violation in reported_errors],
    }


async def patch_desired(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    patch: dict[str, Any],
    limits: twin.Limits,
    stale_after: timedelta,
    actor: Actor,
    if_match: int | None = None,
) -> TwinDocument:
    """Merge-patch desired (``twin.apply_desired``) and store it with its history.

    The row lock makes read-merge-write atomic and orders the device's history; a model's
    schema is share-locked so it cannot change between the check and the commit. Any
    refusal (412, 413, 422) raises before anything is written.
    """
    row = await twin_state.lock_document(conn, tenant_id=tenant_id, device_id=device_id)
    if row is None:
        raise NotFound(f"device {device_id!r} not found")
    model_id: str | None = row["model_id"]
    model: twin.ModelSchema | None = None
    reported_schema = None
    if model_id is not None:
        schemas = await models.schemas_for_desired_write(
            conn, tenant_id=tenant_id, model_id=model_id
        )
        model = twin.ModelSchema(model_id, schemas.desired)
        reported_schema = schemas.reported
    written = twin.apply_desired(
        twin.Side(row["desired_state"], row["desired_metadata"], row["desired_version"]),
        patch,
        limits=limits,
        at=row["now"],
        model=model,
        if_match=if_match,
    )
    if isinstance(written, twin.Refusal):
        raise refusal_error(written)
    updated = await twin_state.write_desired_document(
        conn,
        device_id=device_id,
        desired=written.side.state,
        metadata=written.side.metadata,
        version=written.side.version,
    )
    await history.record(
        conn, tenant_id=tenant_id, device_id=device_id, actor=actor, entry=written.history
    )
    return twin_document(
        updated, stale_after=stale_after, model_id=model_id, reported_schema=reported_schema
    )
