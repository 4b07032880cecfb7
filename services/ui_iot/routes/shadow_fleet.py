"""The fleet summary of one named shadow (``GET /customer/fleet/summary?shadow=NAME``)."""

from __future__ import annotations

from typing import Any

from shared import twin
from shared.db import Connection
from shared.errors import Unprocessable
from shared.ids import is_device_id, is_shadow_name
from shared.settings import Settings

_STATUSES = frozenset({"synced", "pending", "stale", "rejected"})

# A named shadow's status, as ``twin.sync_status`` (stale, then rejected, then pending); $4
# the status asked for, $5 the stale interval.
_STATUS_SQL = """CASE WHEN s.last_seen IS NULL OR s.last_seen < now() - $5::interval THEN 'stale'
                      WHEN n.rejected_version IS NOT NULL
                           AND n.rejected_version > n.reported_version THEN 'rejected'
                      WHEN twin_awaits_report(n.desired_version, n.reported_version)
                           THEN 'pending'
                      ELSE 'synced' END"""
_REJECTED_SQL = "(n.rejected_version IS NOT NULL AND n.rejected_version > n.reported_version)"


async def shadow_summary(
    conn: Connection, *, tenant_id: str, shadow: str, settings: Settings
) -> dict[str, int]:
    """The tenant's devices that have the named shadow ``shadow``, counted by its status
    (the same rule as ``twin_has_sync_status``; connected from the device). Named shadows
    are few per tenant beside its devices: one pass over the tenant's rows of that name."""
    if not is_shadow_name(shadow):
        raise Unprocessable(f"shadow {shadow[:80]!r} is not a shadow name")
    row = await conn.fetchrow(
        f"""SELECT count(*) AS total,
                  count(*) FILTER (WHERE s.last_seen IS NULL
                                      OR s.last_seen < now() - $3::interval) AS stale,
                  count(*) FILTER (WHERE s.last_seen >= now() - $3::interval
                                     AND NOT {_REJECTED_SQL}
                                     AND twin_awaits_report(n.desired_version,
                                                            n.reported_version)) AS pending,
                  count(*) FILTER (WHERE s.last_seen >= now() - $3::interval
                                     AND {_REJECTED_SQL}) AS rejected,
                  count(*) FILTER (WHERE s.connected) AS connected
           FROM device_shadows n JOIN device_state s ON s.device_id = n.device_id
           WHERE n.tenant_id = $1 AND n.name = $2""",  # noqa: S608 - constant SQL
        tenant_id,
        shadow,
        settings.stale_after,
    )
    assert row is not None
    total, stale, pending, rejected = row["total"], row["stale"], row["pending"], row["rejected"]
    return {
        "total": total,
        "synced": total - stale - pending - rejected,
        "pending": pending,
        "stale": stale,
        "rejected": rejected,
        "connected": row["connected"],
    }


async def shadow_devices(
    conn: Connection,
    *,
    tenant_id: str,
    shadow: str,
    sync_status: str | None,
    cursor: str | None,
    limit: int,
    settings: Settings,
) -> dict[str, Any]:
    """``GET /customer/devices?shadow=NAME[&sync_status=]``: the devices that have that
    named shadow, by device id, each with that shadow's versions and status."""
    if not is_shadow_name(shadow):
        raise Unprocessable(f"shadow {shadow[:80]!r} is not a shadow name")
    if sync_status is not None and sync_status not in _STATUSES:
        raise Unprocessable("sync_status must be one of synced, pending, stale, rejected")
    if cursor is not None and not is_device_id(cursor):
        raise Unprocessable("cursor is not valid: pass the 'next' of the previous page")
    rows = await conn.fetch(
        f"""SELECT n.device_id, d.name, d.tags, n.desired_version, n.reported_version,
                  s.last_seen, n.rejected_version
           FROM device_shadows n
           JOIN device_state s ON s.device_id = n.device_id
           JOIN devices d ON d.device_id = n.device_id AND d.revoked_at IS NULL
           WHERE n.tenant_id = $1 AND n.name = $2 AND n.device_id > $3
             AND ($4::text IS NULL OR {_STATUS_SQL} = $4)
           ORDER BY n.device_id
           LIMIT $6""",  # noqa: S608 - constant SQL
        tenant_id,
        shadow,
        cursor or "",
        sync_status,
        settings.stale_after,
        limit + 1,
    )
    page = rows[:limit]
    return {
        "items": [
            {
                "device_id": row["device_id"],
                "name": row["name"],
                "tags": row["tags"],
                "shadow": shadow,
                "desired_version": row["desired_version"],
                "reported_version": row["reported_version"],
                "sync_status": twin.sync_status(
                    row["desired_version"],
                    row["reported_version"],
                    row["last_seen"],
                    stale_after=settings.stale_after,
                    rejected_version=row["rejected_version"],
                ),
                "last_seen": row["last_seen"].isoformat() if row["last_seen"] else None,
            }
            for row in page
        ],
        "next": page[-1]["device_id"] if len(rows) > limit else None,
    }
