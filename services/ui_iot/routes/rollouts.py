"""Staged, health-gated rollouts (SPEC §11): create, read, resume, pause, abort."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from shared.services import audit, rollouts
from shared.web import StorableJSONRoute, json_body, json_body_schema
from ui_iot.deps import AppSettings, ClientIp, Conn, Operator, Viewer

router = APIRouter(
    route_class=StorableJSONRoute, prefix="/customer/fleet/rollouts", tags=["rollouts"]
)


class RolloutQueued(BaseModel):
    rollout_id: str


_BODY = json_body_schema(
    {
        "type": "object",
        "required": ["desired", "stages", "success"],
        "properties": {
            "filter": {"type": "object", "description": "as for bulk desired jobs"},
            "desired": {"type": "object", "description": "JSON merge patch"},
            "stages": {
                "type": "array",
                "description": 'percentages (10, "10%", {"percent": 10}) or {"count": n}',
            },
            "success": {
                "type": "object",
                "required": ["synced_ratio", "within_s"],
                "properties": {
                    "synced_ratio": {"type": "number"},
                    "within_s": {"type": "number"},
                    "health": {
                        "type": "object",
                        "properties": {
                            "pointer": {"type": "string"},
                            "op": {"enum": list(rollouts.HEALTH_OPS)},
                            "value": {},
                        },
                    },
                },
            },
            "on_failure": {"enum": ["pause", "revert"]},
        },
    }
)


@router.post("", status_code=202, response_model=RolloutQueued, openapi_extra=_BODY)
async def create_rollout(
    request: Request, who: Operator, conn: Conn, settings: AppSettings, ip: ClientIp
) -> dict[str, str]:
    """Start a rollout: its first stage is written at once; poll it for progress."""
    parsed = rollouts.parse_request(await json_body(request), settings.limits)
    rollout_id = await rollouts.create(
        conn,
        tenant_id=who.tenant_id,
        request=parsed,
        created_by=who.email,
        stale_after=settings.stale_after,
    )
    await audit.record(conn, who, "rollout.create", rollout_id, rollouts.audit_detail(parsed), ip)
    return {"rollout_id": rollout_id}


@router.get("")
async def recent_rollouts(
    who: Viewer, conn: Conn, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> dict[str, Any]:
    """The tenant's latest rollouts, newest first."""
    return await rollouts.recent(conn, tenant_id=who.tenant_id, limit=limit)


@router.get("/{rollout_id}")
async def get_rollout(rollout_id: str, who: Viewer, conn: Conn) -> dict[str, Any]:
    """The state and each stage's counts (written, synced, rejected, unhealthy)."""
    return await rollouts.get(conn, tenant_id=who.tenant_id, rollout_id=rollout_id)


@router.post("/{rollout_id}/{action}")
async def act_on_rollout(
    rollout_id: str,
    action: Literal["resume", "pause", "abort"],
    who: Operator,
    conn: Conn,
    ip: ClientIp,
) -> dict[str, Any]:
    """resume a paused rollout (its stage's gate opens again), pause one, or abort it."""
    document = await rollouts.act(
        conn, tenant_id=who.tenant_id, rollout_id=rollout_id, action=action, who=who.email
    )
    await audit.record(conn, who, f"rollout.{action}", rollout_id, {}, ip)
    return document
