"""Twin reads and writes for both APIs and the MQTT bridge, on top of ``shared.twin``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared import twin
from shared.db import Connection
from shared.errors import NotFound, PreconditionFailed, TooLarge, Unprocessable
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


def _enforce_limits(document: Any, limits: twin.Limits, *, what: str) -> None:
    try:
        twin.check_limits(document, limits, what=what)
    except twin.TwinLimitError as exc:
        raise (TooLarge if exc.too_large else Unprocessable)(str(exc)) from exc


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
    """Merge-patch desired and bump its version by one, with its metadata and history.

    The row lock makes read-merge-write atomic and orders the device's history; a model's
    schema is share-locked so it cannot change between this check and the commit. Any
    refusal (412, 413, 422) raises before anything is written.
    """
    _enforce_limits(patch, limits, what="desired patch")
    row = await twin_state.lock_document(conn, tenant_id=tenant_id, device_id=device_id)
    if row is None:
        raise NotFound(f"device {device_id!r} not found")
    if if_match is not None and row["desired_version"] != if_match:
        raise PreconditionFailed(
            f"desired_version is {row['desired_version']}, not {if_match}: the twin changed"
        )
    merged = twin.merge_patch(row["desired_state"], patch)
    _enforce_limits(merged, limits, what="desired state")
    model_id: str | None = row["model_id"]
    reported_schema = None
    if model_id is not None:
        schemas = await models.schemas_for_desired_write(
            conn, tenant_id=tenant_id, model_id=model_id
        )
        violations = twin.schema_violations(schemas.desired, merged)
        if violations:
            raise models.desired_violations_error(
                model_id, violations, what="the desired state after this patch"
            )
        reported_schema = schemas.reported
    version = row["desired_version"] + 1
    metadata = twin.merge_metadata(row["desired_metadata"], patch, version=version, at=row["now"])
    updated = await twin_state.write_desired_document(
        conn, device_id=device_id, desired=merged, metadata=metadata, version=version
    )
    await history.record(
        conn,
        tenant_id=tenant_id,
        device_id=device_id,
        kind="desired",
        actor=actor,
        version=version,
        patch=patch,
        at=row["now"],
    )
    return twin_document(
        updated, stale_after=stale_after, model_id=model_id, reported_schema=reported_schema
    )


@dataclass(frozen=True, slots=True)
class Report:
    """A device's report, parsed and limit-checked, from HTTP or MQTT alike."""

    reported: dict[str, Any]
    version: int
    client_token: str | None = None


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    accepted: bool
    version: int
    error: str | None = None
    # Accepted, but the reported state now breaks the model's reported schema: how many
    # rules failed (the twin document lists them; callers count such reports).
    schema_violations: int = 0

    def as_json(self, client_token: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"accepted": self.accepted, "version": self.version}
        if self.error is not None:
            body["error"] = self.error
        if client_token is not None:
            body["clientToken"] = client_token
        return body


def parse_report(payload: Any, limits: twin.Limits) -> Report:
    """Validate a decoded report body; raises Unprocessable (422) or TooLarge (413)."""
    if not isinstance(payload, dict):
        raise Unprocessable("report must be a JSON object")
    reported, version = payload.get("reported"), payload.get("version")
    if not isinstance(reported, dict):
        raise Unprocessable("'reported' must be a JSON object")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise Unprocessable("'version' must be a non-negative integer")
    client_token = payload.get("clientToken")
    if client_token is not None and (not isinstance(client_token, str) or len(client_token) > 64):
        raise Unprocessable("'clientToken' must be a string of at most 64 characters")
    _enforce_limits(reported, limits, what="reported state")
    return Report(reported=reported, version=version, client_token=client_token)


async def apply_report(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    report: Report,
    limits: twin.Limits,
    actor: Actor,
) -> ReportOutcome:
    """Apply one report under the version rule, with its metadata and history.

    A rejected report still marks the device seen. A report that breaks the model's reported
    schema is accepted and flagged (``schema_violations``), never refused.
    """
    row = await twin_state.lock_document(conn, tenant_id=tenant_id, device_id=device_id)
    if row is None:
        raise NotFound(f"device {device_id!r} not found")
    verdict = twin.check_report_version(
        report.version, row["reported_version"], row["desired_version"]
    )
    if not verdict.accepted:
        await twin_state.touch(conn, device_id=device_id)
        return ReportOutcome(False, row["reported_version"], verdict.error)
    merged = twin.merge_patch(row["reported_state"], report.reported)
    _enforce_limits(merged, limits, what="reported state")
    metadata = twin.merge_metadata(
        row["reported_metadata"], report.reported, version=report.version, at=row["now"]
    )
    await twin_state.write_reported_document(
        conn, device_id=device_id, reported=merged, metadata=metadata, version=report.version
    )
    await history.record(
        conn,
        tenant_id=tenant_id,
        device_id=device_id,
        kind="reported",
        actor=actor,
        version=report.version,
        patch=report.reported,
        at=row["now"],
    )
    violations = 0
    if row["model_id"] is not None:
        schema = await models.reported_schema(conn, tenant_id=tenant_id, model_id=row["model_id"])
        if schema is not None:
            violations = len(twin.schema_violations(schema, merged))
    return ReportOutcome(True, report.version, schema_violations=violations)
