"""Device HTTP API (SPEC §6): authenticated by ``X-Provision-Token``."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from ingest_iot.metrics import REPORTS
from shared.db import transaction
from shared.errors import NotFound, Unauthorized
from shared.repositories import devices as devices_repo
from shared.repositories import twin_state
from shared.security import TOKEN_PREFIX, hash_provision_token
from shared.services import twins
from shared.services.history import Actor
from shared.services.models import REPORTED_SCHEMA_VIOLATIONS
from shared.settings import Settings
from shared.web import ORJSONResponse, json_body

router = APIRouter(prefix="/device/v1", tags=["device"])

_REPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["reported", "version"],
                    "properties": {
                        "reported": {"type": "object"},
                        "version": {"type": "integer", "minimum": 0},
                    },
                }
            }
        },
    }
}


def _pool(request: Request) -> asyncpg.Pool:
    value: asyncpg.Pool = request.app.state.pool
    return value


def _settings(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


async def _device(
    request: Request, x_provision_token: Annotated[str | None, Header()] = None
) -> tuple[str, str]:
    """(device_id, tenant_id) for a live token; marks the device seen. 401 reveals nothing."""
    if not x_provision_token or not x_provision_token.startswith(TOKEN_PREFIX):
        raise Unauthorized("invalid provision token")
    async with transaction(_pool(request)) as conn:
        row = await devices_repo.resolve_token(conn, hash_provision_token(x_provision_token))
    if row is None:
        raise Unauthorized("invalid provision token")
    return row["device_id"], row["tenant_id"]


Device = Annotated[tuple[str, str], Depends(_device)]


@router.get("/shadow")
async def get_shadow(request: Request, device: Device) -> dict[str, Any]:
    device_id, tenant_id = device
    async with _pool(request).acquire() as conn:
        row = await twin_state.get(conn, tenant_id=tenant_id, device_id=device_id)
    if row is None:
        raise NotFound("device not found")
    return {"desired": row["desired_state"], "version": row["desired_version"]}


@router.post("/shadow/reported", openapi_extra=_REPORT_BODY)
async def post_reported(request: Request, device: Device) -> Response:
    device_id, tenant_id = device
    settings = _settings(request)
    try:
        report = twins.parse_report(await json_body(request), settings.limits)
    except Exception:
        REPORTS.labels("http", "malformed").inc()
        raise
    async with transaction(_pool(request)) as conn:
        outcome = await twins.apply_report(
            conn,
            tenant_id=tenant_id,
            device_id=device_id,
            report=report,
            limits=settings.limits,
            actor=Actor.device(),
        )
    REPORTS.labels("http", "accepted" if outcome.accepted else "version").inc()
    if outcome.schema_violations:
        REPORTED_SCHEMA_VIOLATIONS.labels("http").inc()
    return ORJSONResponse(
        outcome.as_json(report.client_token), status_code=200 if outcome.accepted else 409
    )
