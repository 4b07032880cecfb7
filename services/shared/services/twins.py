"""Twin reads and writes for both APIs and the MQTT bridge, on top of ``shared.twin``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared import aws_shadow, twin
from shared.db import Connection
from shared.errors import Conflict, NotFound, refusal_error
from shared.repositories import shadow_outbox, twin_state
from shared.repositories import shadows as shadows_repo
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
        ),
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
    shadow: str = "",
    max_shadows: int = 10,
) -> TwinDocument:
    """Merge-patch desired (``twin.apply_desired``) and store it with its history.

    The row lock makes read-merge-write atomic and orders the device's history; a model's
    schema is share-locked so it cannot change between the check and the commit. Any
    refusal (412, 413, 422) raises before anything is written.

    ``shadow`` names a named shadow (SPEC §9; "" is the classic one): created by this
    write if it does not exist yet (409 when the device has ``max_shadows`` already).
    """
    if shadow:
        return await _patch_named_desired(
            conn,
            tenant_id=tenant_id,
            device_id=device_id,
            shadow=shadow,
            patch=patch,
            limits=limits,
            stale_after=stale_after,
            actor=actor,
            if_match=if_match,
            max_shadows=max_shadows,
        )
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
    if actor.type == "user":
        await announce_to_aws(
            conn, tenant_id=tenant_id, device_id=device_id, shadow="", before=row, after=updated
        )
    return twin_document(
        updated, stale_after=stale_after, model_id=model_id, reported_schema=reported_schema
    )


async def lock_or_create_shadow(
    conn: Connection, *, tenant_id: str, device_id: str, shadow: str, max_shadows: int
) -> asyncpg.Record:
    """A named shadow's row, locked, created first if it does not exist (its first update
    creates it, SPEC §9): 404 for no such device, 409 when the device has ``max_shadows``."""
    row = await shadows_repo.lock(conn, tenant_id=tenant_id, device_id=device_id, shadow=shadow)
    if row is not None:
        return row
    created = await shadows_repo.create(
        conn, tenant_id=tenant_id, device_id=device_id, shadow=shadow, max_shadows=max_shadows
    )
    if created == "missing":
        raise NotFound(f"device {device_id!r} not found")
    if created == "full":
        raise Conflict(
            f"device {device_id!r} has {max_shadows} named shadows already, the limit "
            "(IOTCLOUD_MAX_SHADOWS): delete one first"
        )
    row = await shadows_repo.lock(conn, tenant_id=tenant_id, device_id=device_id, shadow=shadow)
    assert row is not None
    return row


def shadow_document(row: asyncpg.Record, *, stale_after: timedelta) -> TwinDocument:
    """A named shadow's document: the twin document's fields, its ``shadow`` name and its
    document ``version`` (what the AWS topics call version)."""
    document = twin_document(row, stale_after=stale_after, model_id=None, reported_schema=None)
    document["shadow"] = row["name"]
    document["version"] = row["document_version"]
    return document


async def _patch_named_desired(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    shadow: str,
    patch: dict[str, Any],
    limits: twin.Limits,
    stale_after: timedelta,
    actor: Actor,
    if_match: int | None,
    max_shadows: int,
) -> TwinDocument:
    """:func:`patch_desired` on a named shadow: the same rules (``twin.apply_desired``),
    stored in its own row. Device models constrain the classic shadow only."""
    row = await lock_or_create_shadow(
        conn, tenant_id=tenant_id, device_id=device_id, shadow=shadow, max_shadows=max_shadows
    )
    written = twin.apply_desired(
        twin.Side(row["desired_state"], row["desired_metadata"], row["desired_version"]),
        patch,
        limits=limits,
        at=row["now"],
        if_match=if_match,
    )
    if isinstance(written, twin.Refusal):
        raise refusal_error(written)
    await shadows_repo.write(
        conn,
        device_id=device_id,
        shadow=shadow,
        desired=(written.side.state, written.side.metadata, written.side.version),
        document_version=row["document_version"] + 1,
    )
    await history.record(
        conn,
        tenant_id=tenant_id,
        device_id=device_id,
        actor=actor,
        entry=written.history,
        shadow=shadow,
    )
    updated = await shadows_repo.get(conn, tenant_id=tenant_id, device_id=device_id, shadow=shadow)
    assert updated is not None
    if actor.type == "user":
        await announce_to_aws(
            conn,
            tenant_id=tenant_id,
            device_id=device_id,
            shadow=shadow,
            before=row,
            after=updated,
        )
    return shadow_document(updated, stale_after=stale_after)


async def announce_to_aws(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    shadow: str,
    before: asyncpg.Record,
    after: asyncpg.Record,
) -> None:
    """Queue an operator write's ``update/delta`` and ``update/documents`` for devices on
    the AWS topics (ingest_iot's publisher sends them after commit, SPEC §9)."""
    at = after["shadow_updated_at"]
    current = aws_shadow.Snapshot.of(after)
    await shadow_outbox.add(
        conn,
        tenant_id=tenant_id,
        device_id=device_id,
        shadow=shadow,
        delta=aws_shadow.delta_message(current, at=at),
        documents=aws_shadow.documents_message(aws_shadow.Snapshot.of(before), current, at=at),
    )


async def delete_shadow(conn: Connection, *, tenant_id: str, device_id: str, shadow: str) -> bool:
    """Delete a named shadow; False when there is none. Its retained desired message is
    cleared and ``update/documents`` (current: null) sent by the publisher after commit."""
    row = await shadows_repo.lock(conn, tenant_id=tenant_id, device_id=device_id, shadow=shadow)
    if row is None:
        return False
    await shadows_repo.delete(conn, tenant_id=tenant_id, device_id=device_id, shadow=shadow)
    await shadow_outbox.add(
        conn,
        tenant_id=tenant_id,
        device_id=device_id,
        shadow=shadow,
        delta=None,
        documents=aws_shadow.documents_message(aws_shadow.Snapshot.of(row), None, at=row["now"]),
    )
    return True
