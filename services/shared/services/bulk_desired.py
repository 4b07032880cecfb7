"""Bulk desired jobs: one merge patch on many devices in a handful of statements per batch.

A single write is bound by round trips, and a 100,000-device rollout must not be. The write
itself is ``shared.twin.apply_desired``, as for a single PATCH: this module only locks the
rows (and each model's schema, share-locked as a single write does), calls it per device and
stores the results in two statements. A device whose write is refused is left untouched and
reported, never partly written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared import aws_shadow, twin
from shared.db import Connection
from shared.errors import DomainError, refusal_error
from shared.repositories import fleet as fleet_repo
from shared.repositories import shadow_outbox
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
    schemas: dict[str, twin.ModelSchema | DomainError] = {}
    writes: list[tuple[str, twin.Written]] = []
    before = {row["device_id"]: row for row in rows}
    for row in rows:
        device_id = row["device_id"]
        model_id: str | None = row["model_id"]
        model: twin.ModelSchema | None = None
        if model_id is not None:
            if model_id not in schemas:
                try:
                    found = await models.schemas_for_desired_write(
                        conn, tenant_id=tenant_id, model_id=model_id
                    )
                    schemas[model_id] = twin.ModelSchema(model_id, found.desired)
                except DomainError as exc:
                    schemas[model_id] = exc
            cached = schemas[model_id]
            if isinstance(cached, DomainError):
                outcomes[device_id] = _refusal(cached)
                continue
            model = cached
        written = twin.apply_desired(
            twin.Side(row["desired_state"], row["desired_metadata"], row["desired_version"]),
            patch,
            limits=limits,
            at=row["now"],
            model=model,
        )
        if isinstance(written, twin.Refusal):
            outcomes[device_id] = _refusal(refusal_error(written))
            continue
        writes.append((device_id, written))
        outcomes[device_id] = Outcome("written", written.side.version)
    if writes:
        ids = [device_id for device_id, _ in writes]
        versions = [written.side.version for _, written in writes]
        await fleet_repo.write_desired_many(
            conn,
            device_ids=ids,
            desired=[written.side.state for _, written in writes],
            metadata=[written.side.metadata for _, written in writes],
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
            actor_id=actor.id,
        )
        if actor.type == "user":
            # For devices on the AWS topics (SPEC §9): sent after commit by the publisher.
            # Each device's document before this write: update/documents' ``previous``.
            previous = {
                device_id: aws_shadow.document(aws_shadow.Snapshot.of(before[device_id]))
                for device_id in ids
            }
            await shadow_outbox.add_batch(
                conn, tenant_id=tenant_id, device_ids=ids, previous=previous
            )
    return outcomes
