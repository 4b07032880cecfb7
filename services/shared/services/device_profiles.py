"""A device's profile: its name, its tags and the model its twin must follow (SPEC §8)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shared import ids, twin
from shared.db import Connection
from shared.errors import NotFound, Unprocessable
from shared.repositories import devices as devices_repo
from shared.repositories import twin_state
from shared.services import devices, models

# No ':' in a key, so a filter ``tag=key:value`` splits at its first ':' unambiguously.
MAX_TAG_VALUE = 256
MAX_TAGS = 64


def split_tag_patch(tags: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """A tag merge patch as (tags to set, tag keys to remove); 422 on a bad key or value."""
    to_set: dict[str, str] = {}
    to_remove: list[str] = []
    for key, value in tags.items():
        if not ids.is_tag_key(key):
            raise Unprocessable(
                f"tag key {key!r} must match [A-Za-z0-9][A-Za-z0-9._/-]{{0,63}} (no ':')"
            )
        if value is None:
            to_remove.append(key)
        elif not isinstance(value, str) or len(value) > MAX_TAG_VALUE:
            raise Unprocessable(
                f"tag {key!r} must be a string of at most {MAX_TAG_VALUE} characters, or null"
            )
        else:
            to_set[key] = value
    return to_set, to_remove


async def update_device(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    name: str | None,
    tags: dict[str, Any] | None,
    model_id: str | None,
    change_model: bool,
    stale_after: timedelta,
) -> dict[str, Any]:
    """Apply a profile patch; the device summary with its ``model_id`` afterwards.

    Attaching a model checks the current desired state against it (422 naming the failed
    pointers otherwise). The twin row is locked first, as a desired write does, so no
    desired write can slip between that check and the commit.
    """
    to_set, to_remove = split_tag_patch(tags or {})
    if change_model:
        row = await twin_state.lock_document(conn, tenant_id=tenant_id, device_id=device_id)
        if row is None:
            raise NotFound(f"device {device_id!r} not found")
        if model_id is not None and model_id != row["model_id"]:
            schemas = await models.schemas_for_desired_write(
                conn, tenant_id=tenant_id, model_id=model_id
            )
            violations = twin.schema_violations(schemas.desired, row["desired_state"])
            if violations:
                raise models.desired_violations_error(
                    model_id, violations, what="the device's current desired state"
                )
    tag_count = await devices_repo.update_profile(
        conn,
        tenant_id=tenant_id,
        device_id=device_id,
        name=name,
        set_tags=to_set,
        remove_tags=to_remove,
        model_id=model_id,
        change_model=change_model,
    )
    if tag_count is None:
        raise NotFound(f"device {device_id!r} not found")
    if tag_count > MAX_TAGS:
        raise Unprocessable(f"a device has at most {MAX_TAGS} tags; this would make {tag_count}")
    return await profile(conn, tenant_id=tenant_id, device_id=device_id, stale_after=stale_after)


async def profile(
    conn: Connection, *, tenant_id: str, device_id: str, stale_after: timedelta
) -> dict[str, Any]:
    row = await devices_repo.get_profile(conn, tenant_id=tenant_id, device_id=device_id)
    if row is None:
        raise NotFound(f"device {device_id!r} not found")
    return {**devices.device_summary(row, stale_after=stale_after), "model_id": row["model_id"]}
