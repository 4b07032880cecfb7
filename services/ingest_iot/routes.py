"""Device HTTP API (SPEC §6): authenticated by ``X-Provision-Token``."""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ingest_iot.metrics import REPORTS
from ingest_iot.report_batcher import HttpReportBatcher
from shared.errors import TooLarge, Unauthorized, refusal_error
from shared.repositories import devices as devices_repo
from shared.security import TOKEN_PREFIX, hash_provision_token
from shared.services.models import REPORTED_SCHEMA_VIOLATIONS
from shared.services.token_reports import TokenReport
from shared.web import ORJSONResponse, json_body_schema

router = APIRouter(prefix="/device/v1", tags=["device"])

_REPORT_BODY = json_body_schema(
    {
        "type": "object",
        "required": ["reported", "version"],
        "properties": {
            "reported": {"type": "object"},
            "version": {"type": "integer", "minimum": 0},
        },
    }
)


def _pool(request: Request) -> asyncpg.Pool:
    value: asyncpg.Pool = request.app.state.pool
    return value


_INVALID_TOKEN = "invalid provision token"  # noqa: S105 - an error message
# An absent header says so: the device forgot it, which reveals nothing about any token.
_MISSING_TOKEN = "missing X-Provision-Token header"  # noqa: S105 - an error message


def _token_hash(request: Request) -> bytes:
    """The hash to look the token up by; 401 at once for what cannot be a token.

    Read here rather than through a ``Header`` dependency: FastAPI's dependency resolution
    was a tenth of a device request's cost. ``_TOKEN_HEADER`` documents it instead.
    """
    token = request.headers.get("x-provision-token")
    if token is None:
        raise Unauthorized(_MISSING_TOKEN)
    if not token.startswith(TOKEN_PREFIX):
        raise Unauthorized(_INVALID_TOKEN)
    return hash_provision_token(token)


_TOKEN_HEADER = {
    "parameters": [
        {
            "in": "header",
            "name": "x-provision-token",
            "required": True,
            "description": "the device's provision token (`tok-...`)",
            "schema": {"type": "string", "title": "X-Provision-Token"},
        }
    ]
}
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "no `X-Provision-Token` header (`missing X-Provision-Token header`), "
        "or a wrong or revoked token (`invalid provision token`); nothing else is revealed"
    }
}


# First: FastAPI tries a router's routes in order, and this is the hot one.
@router.post(
    "/shadow/reported",
    openapi_extra=_TOKEN_HEADER | _REPORT_BODY,
    responses={
        **_UNAUTHORIZED,
        409: {"description": '`{"accepted": false, "version": <current>, "error"}`'},
        413: {"description": "the report, or the reported state it makes, is too large"},
        422: {"description": "not a report, or the reported state it makes is too deep"},
    },
)
async def post_reported(request: Request) -> Response:
    """Apply a report; answered once it is committed (together with the reports of other
    devices that arrived meanwhile: ``ingest_iot.report_batcher``)."""
    token_hash = _token_hash(request)
    batcher: HttpReportBatcher = request.app.state.report_batcher
    try:
        body = await request.body()
    except TooLarge:
        # Stopped while it streamed in; refused only after the token check, which marks a
        # known device seen: an unknown one learns nothing more.
        if not (await batcher.submit(TokenReport(token_hash, None))).authenticated:
            raise Unauthorized(_INVALID_TOKEN) from None
        REPORTS.labels("http", "too_large").inc()
        raise
    applied = (await batcher.submit(TokenReport(token_hash, body))).applied
    if applied is None or applied.reply is None:
        # No live device holds the token (or none did by the time its report was applied).
        raise Unauthorized(_INVALID_TOKEN)
    REPORTS.labels("http", applied.outcome).inc()
    if applied.schema_violations:
        REPORTED_SCHEMA_VIOLATIONS.labels("http").inc()
    if applied.outcome in {"malformed", "too_large"}:
        assert applied.refusal is not None
        raise refusal_error(applied.refusal)
    return ORJSONResponse(applied.reply, status_code=200 if applied.accepted else 409)


@router.get("/shadow", openapi_extra=_TOKEN_HEADER, responses=_UNAUTHORIZED)
async def get_shadow(request: Request) -> dict[str, Any]:
    token_hash = _token_hash(request)
    # One statement: authenticate, mark seen, read desired.
    async with _pool(request).acquire() as conn:
        row = await devices_repo.resolve_token(conn, token_hash)
    if row is None:
        raise Unauthorized(_INVALID_TOKEN)
    return {"desired": row["desired_state"], "version": row["desired_version"]}
