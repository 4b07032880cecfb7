"""``GET /customer/fleet/history``: the fleet's sync counts over time (the console's chart)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from shared.services import fleet_history
from shared.web import StorableJSONRoute
from ui_iot.deps import Conn, Viewer

router = APIRouter(route_class=StorableJSONRoute, prefix="/customer/fleet", tags=["fleet"])


class Sample(BaseModel):
    at: str
    total: int
    synced: int
    pending: int
    stale: int
    connected: int


class FleetHistory(BaseModel):
    interval_s: int
    items: list[Sample]


@router.get("/history", response_model=FleetHistory)
async def history(
    who: Viewer,
    conn: Conn,
    hours: Annotated[int, Query(ge=1, le=fleet_history.MAX_HOURS)] = 24,
) -> dict[str, Any]:
    """Your fleet's counts by sync status, one sample every `interval_s` seconds over the
    last `hours` (default 24, at most 48), oldest first."""
    return await fleet_history.series(conn, tenant_id=who.tenant_id, hours=hours)
