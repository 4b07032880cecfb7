"""Device HTTP API for named shadows (SPEC §9, docs/devices.md): the classic routes of
``ingest_iot.routes`` with ``name/{name}/`` after ``shadow/``, same bodies, same rules.

A report is applied on its own (``report_batches.apply_named_report``, as the bridge does
for ``.../shadow/name/{name}/reported``), in one transaction with the token's look-up; a
refused report writes nothing but the device's contact, not even the shadow its first
report would have created.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from ingest_iot.metrics import REPORTS
from ingest_iot.routes import (
    _INVALID_TOKEN,
    _REPORT_BODY,
    _TOKEN_HEADER,
    _UNAUTHORIZED,
    _token_hash,
)
from shared import db
from shared.errors import NotFound, Unauthorized, refusal_error
from shared.ids import SHADOW_NAME_PATTERN
from shared.repositories import devices as devices_repo
from shared.repositories import shadows as shadows_repo
from shared.services.history import Actor
from shared.services.report_batches import AppliedReport, IncomingReport, apply_named_report
from shared.settings import Settings
from shared.web import ORJSONResponse

router = APIRouter(prefix="/device/v1", tags=["device"])

_NAME = Path(
    pattern=SHADOW_NAME_PATTERN,
    description="the named shadow: 1 to 64 of `a-z A-Z 0-9 : _ -`",
)


class _Undo(Exception):
    def __init__(self, result: AppliedReport) -> None:
        self.result = result


@router.post(
    "/shadow/name/{name}/reported",
    openapi_extra=_TOKEN_HEADER | _REPORT_BODY,
    responses={
        **_UNAUTHORIZED,
        409: {"description": '`{"accepted": false, "version": <current>, "error"}`'},
        413: {"description": "the report, or the reported state it makes, is too large"},
        422: {
            "description": "not a report, a bad shadow name, the device's named shadows at "
            "their limit, or a reported state too deep"
        },
    },
)
async def post_named_reported(request: Request, name: str = _NAME) -> Response:
    """Apply a report on a named shadow (created by its first accepted report)."""
    token_hash = _token_hash(request)
    body = await request.body()
    settings: Settings = request.app.state.settings
    pool: asyncpg.Pool = request.app.state.pool
    async with db.transaction(pool) as conn:
        device = await devices_repo.resolve_token(conn, token_hash)  # marks it seen
        if device is None:
            raise Unauthorized(_INVALID_TOKEN)
        try:
            async with conn.transaction():  # a savepoint: a refusal undoes only the report
                result = await apply_named_report(
                    conn,
                    IncomingReport(device["tenant_id"], device["device_id"], body, name),
                    limits=settings.limits,
                    actor=Actor.device(),
                    max_shadows=settings.max_shadows,
                )
                if not result.applied:
                    raise _Undo(result)
        except _Undo as undo:
            result = undo.result
    if result.reply is None:  # the device went away meanwhile
        raise Unauthorized(_INVALID_TOKEN)
    REPORTS.labels("http", result.outcome).inc()
    if result.outcome in {"malformed", "too_large"}:
        assert result.refusal is not None
        raise refusal_error(result.refusal)
    return ORJSONResponse(result.reply, status_code=200 if result.accepted else 409)


@router.get(
    "/shadow/name/{name}",
    openapi_extra=_TOKEN_HEADER,
    responses={**_UNAUTHORIZED, 404: {"description": "the device has no shadow of this name"}},
)
async def get_named_shadow(request: Request, name: str = _NAME) -> dict[str, Any]:
    """A named shadow's desired state and version; counts as contact."""
    token_hash = _token_hash(request)
    async with db.transaction(request.app.state.pool) as conn:
        device = await devices_repo.resolve_token(conn, token_hash)
        if device is None:
            raise Unauthorized(_INVALID_TOKEN)
        row = await shadows_repo.get(
            conn, tenant_id=device["tenant_id"], device_id=device["device_id"], shadow=name
        )
    if row is None:
        raise NotFound(f"no shadow named {name!r}")
    return {"desired": row["desired_state"], "version": row["desired_version"]}
