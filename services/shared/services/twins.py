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

TwinDocument = dict[str, Any]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def twin_document(row: asyncpg.Record, *, stale_after: timedelta) -> TwinDocument:
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
    }


def _enforce_limits(document: Any, limits: twin.Limits, *, what: str) -> None:
    try:
        twin.check_limits(document, limits, what=what)
    except twin.TwinLimitError as exc:
        raise (TooLarge if exc.too_large else Unprocessable)(str(exc)) from exc


async def get_twin(
    conn: Connection, *, tenant_id: str, device_id: str, stale_after: timedelta
) -> TwinDocument:
    row = await twin_state.get(conn, tenant_id=tenant_id, device_id=device_id)
    if row is None:
        raise NotFound(f"device {device_id!r} not found")
    return twin_document(row, stale_after=stale_after)


async def patch_desired(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    patch: dict[str, Any],
    limits: twin.Limits,
    stale_after: timedelta,
    if_match: int | None = None,
) -> TwinDocument:
    """Merge-patch desired and bump its version by one; the row lock makes it atomic."""
    _enforce_limits(patch, limits, what="desired patch")
    row = await twin_state.lock(conn, tenant_id=tenant_id, device_id=device_id)
    if row is None:
        raise NotFound(f"device {device_id!r} not found")
    if if_match is not None and row["desired_version"] != if_match:
        raise PreconditionFailed(
            f"desired_version is {row['desired_version']}, not {if_match}: the twin changed"
        )
    merged = twin.merge_patch(row["desired_state"], patch)
    _enforce_limits(merged, limits, what="desired state")
    updated = await twin_state.write_desired(
        conn, device_id=device_id, desired=merged, version=row["desired_version"] + 1
    )
    return twin_document(updated, stale_after=stale_after)


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
    conn: Connection, *, tenant_id: str, device_id: str, report: Report, limits: twin.Limits
) -> ReportOutcome:
    """Apply one report under the version rule; a rejected report still marks the device seen."""
    row = await twin_state.lock(conn, tenant_id=tenant_id, device_id=device_id)
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
    await twin_state.write_reported(
        conn, device_id=device_id, reported=merged, version=report.version
    )
    return ReportOutcome(True, report.version)
