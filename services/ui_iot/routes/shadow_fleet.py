"""The fleet summary of one named shadow (``GET /customer/fleet/summary?shadow=NAME``)."""

from __future__ import annotations

from shared.db import Connection
from shared.errors import Unprocessable
from shared.ids import is_shadow_name
from shared.settings import Settings


async def shadow_summary(
    conn: Connection, *, tenant_id: str, shadow: str, settings: Settings
) -> dict[str, int]:
    """The tenant's devices that have the named shadow ``shadow``, counted by its status
    (the same rule as ``twin_has_sync_status``; connected from the device). Named shadows
    are few per tenant beside its devices: one pass over the tenant's rows of that name."""
    if not is_shadow_name(shadow):
        raise Unprocessable(f"shadow {shadow[:80]!r} is not a shadow name")
    row = await conn.fetchrow(
        """SELECT count(*) AS total,
                  count(*) FILTER (WHERE s.last_seen IS NULL
                                      OR s.last_seen < now() - $3::interval) AS stale,
                  count(*) FILTER (WHERE s.last_seen >= now() - $3::interval
                                     AND twin_awaits_report(n.desired_version,
                                                            n.reported_version)) AS pending,
                  count(*) FILTER (WHERE s.connected) AS connected
           FROM device_shadows n JOIN device_state s ON s.device_id = n.device_id
           WHERE n.tenant_id = $1 AND n.name = $2""",
        tenant_id,
        shadow,
        settings.stale_after,
    )
    assert row is not None
    total, stale, pending = row["total"], row["stale"], row["pending"]
    return {
        "total": total,
        "synced": total - stale - pending,
        "pending": pending,
        "stale": stale,
        "connected": row["connected"],
    }
