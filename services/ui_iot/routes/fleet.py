"""Fleet routes (SPEC §8): the status summary and bulk desired jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from shared.services import fleet
from shared.web import StorableJSONRoute, json_body, json_body_schema
from ui_iot.deps import AppSettings, Conn, Operator, Viewer
from ui_iot.routes.shadow_fleet import shadow_summary

router = APIRouter(route_class=StorableJSONRoute, prefix="/customer/fleet", tags=["fleet"])


class FleetSummary(BaseModel):
    total: int
    synced: int
    pending: int
    stale: int
    connected: int = Field(description="devices connected to the broker now")


class JobQueued(BaseModel):
    job_id: str


_JOB_BODY = json_body_schema(
    {
        "type": "object",
        "required": ["filter", "desired"],
        "properties": {
            "filter": {
                "type": "object",
                "description": "every key set must hold; {} matches every device",
                "properties": {
                    "device_ids": {"type": "array", "items": {"type": "string"}},
                    "tag": {"type": "string", "description": "key:value"},
                    "sync_status": {"enum": ["synced", "pending", "stale"]},
                    "model_id": {"type": "string"},
                    "q": {"type": "string", "description": "text in id or name"},
                },
            },
            "desired": {"type": "object", "description": "JSON merge patch"},
        },
    }
)


@router.get("/summary", response_model=FleetSummary)
async def summary(
    who: Viewer, conn: Conn, settings: AppSettings, shadow: str | None = None
) -> dict[str, int]:
    """Device counts by sync status, and how many are connected, straight from the database.

    ``?shadow=NAME`` counts the devices that have that named shadow, by its sync status
    (SPEC §9); without it, the classic shadow."""
    if shadow is not None:
        return await shadow_summary(conn, tenant_id=who.tenant_id, shadow=shadow, settings=settings)
    return await fleet.summary(conn, tenant_id=who.tenant_id, stale_after=settings.stale_after)


@router.post("/desired", status_code=202, response_model=JobQueued, openapi_extra=_JOB_BODY)
async def queue_desired_job(
    request: Request, who: Operator, conn: Conn, settings: AppSettings
) -> dict[str, str]:
    """Queue one merge patch for every device the filter matches; poll the job for progress."""
    job_request = fleet.parse_job_request(await json_body(request), settings.limits)
    job_id = await fleet.create_job(
        conn, tenant_id=who.tenant_id, request=job_request, created_by=who.email
    )
    return {"job_id": job_id}


@router.get("/jobs")
async def recent_jobs(
    who: Viewer, conn: Conn, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> dict[str, Any]:
    """The tenant's latest bulk jobs, newest first."""
    return await fleet.recent_jobs(conn, tenant_id=who.tenant_id, limit=limit)


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, who: Viewer, conn: Conn) -> dict[str, Any]:
    """`status` is running, done or failed; `synced` counts devices that reported the version
    the job wrote to them."""
    return await fleet.get_job(conn, tenant_id=who.tenant_id, job_id=job_id)
