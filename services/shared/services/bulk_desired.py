"""The batch twin of :func:`shared.services.twins.patch_desired`, for bulk desired jobs.

One merge patch on many devices with a handful of statements per batch instead of three per
device: a single write is bound by round trips, and a 100,000-device rollout must not be.
Every rule comes from ``shared.twin`` (merge patch, limits, per-leaf metadata, JSON Schema),
and every step mirrors ``patch_desired``: lock the rows, check the limits and the model's
schema (share-locked, as there), bump the version by one, stamp metadata with the
transaction clock, record history with the same actor. A device whose write is refused is
left untouched and reported, never partly written. ``tests/integration/test_fleet_jobs.py``
checks that a bulk write leaves exactly what a single PATCH leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared import twin
from shared.db import Connection
from shared.errors import DomainError, TooLarge, Unprocessable
from shared.repositories import fleet as fleet_repo
from shared.services import models
from shared.services.history import Actor


@dataclass(frozen=True, slots=True)
class Outcome:
    """``written`` (with the new desired version), ``skipped`` (gone) or ``failed``."""

    outcome: str
    version: int | None = None
    error: str | None = None


def _refusal(exc: DomainError) -> Outcome:
    detail = exc.detail
    if isinstance(detail, dict):
        errors = "; ".join(
            f"{error.get('pointer') or '/'}: {error.get('message')}"
            for error in detail.get("errors", [])
        )
        text = f"{detail.get('message', '')}" + (f" ({errors})" if errors else "")
    else:
        text = str(detail)
    return Outcome("failed", error=text)


async def patch_desired_many(
    conn: Connection,
    *,
    tenant_id: str,
    device_ids: list[str],
    patch: dict[str, Any],
    limits: twin.Limits,
    actor: Actor,
) -> dict[str, Outcome]:
    """Merge-patch desired on each device (version +1 each); call inside a transaction."""
    rows = await fleet_repo.lock_twins(conn, tenant_id=tenant_id, device_ids=sorted(device_ids))
    outcomes = {
        device_id: Outcome("skipped", error="device no longer exists") for device_id in device_ids
    }
    schemas: dict[str, models.Schemas | DomainError] = {}
    writes: list[tuple[str, dict[str, Any], dict[str, Any], int]] = []
    for row in rows:
        device_id = row["device_id"]
        merged = twin.merge_patch(row["desired_state"], patch)
        try:
            twin.check_limits(merged, limits, what="desired state")
        except twin.TwinLimitError as exc:
            outcomes[device_id] = _refusal((TooLarge if exc.too_large else Unprocessable)(str(exc)))
            continue
        model_id: str | None = row["model_id"]
        if model_id is not None:
            if model_id not in schemas:
                try:
                    schemas[model_id] = await models.schemas_for_desired_write(
                        conn, tenant_id=tenant_id, model_id=model_id
                    )
                except DomainError as exc:
                    schemas[model_id] = exc
            schema = schemas[model_id]
            if isinstance(schema, DomainError):
                outcomes[device_id] = _refusal(schema)
                continue
            violations = twin.schema_violations(schema.desired, merged)
            if violations:
                outcomes[device_id] = _refusal(
                    models.desired_violations_error(
                        model_id, violations, what="the desired state after this patch"
                    )
                )
                continue
        version = row["desired_version"] + 1
        metadata = twin.merge_metadata(
            row["desired_metadata"], patch, version=version, at=row["now"]
        )
        writes.append((device_id, merged, metadata, version))
        outcomes[device_id] = Outcome("written", version)
    if writes:
        ids = [write[0] for write in writes]
        versions = [write[3] for write in writes]
        await fleet_repo.write_desired_many(
            conn,
            device_ids=ids,
            desired=[write[1] for write in writes],
            metadata=[write[2] for write in writes],
            versions=versions,
        )
        await fleet_repo.record_desired_history(
            conn,
            tenant_id=tenant_id,
            device_ids=ids,
            versions=versions,
            patch=patch,
            actor_type=actor.type,
            actor_email=actor.email,
            at=rows[0]["now"],
        )
    return outcomes
