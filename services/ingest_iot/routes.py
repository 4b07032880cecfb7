"""Device HTTP API (SPEC §6): authenticated by ``X-Provision-Token``."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from ingest_iot.metrics import REPORTS
from shared.db import transaction
from shared.errors import DomainError, Unauthorized, Unprocessable
from shared.repositories import devices as devices_repo
from shared.security import TOKEN_PREFIX, hash_provision_token
from shared.services import twins
from shared.services.history import Actor
from shared.services.models import REPORTED_SCHEMA_VIOLATIONS
from shared.settings import Settings
from shared.web import ORJSONResponse, json_body, json_body_schema

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


def _settings(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


async def _token_hash(x_provision_token: Annotated[str | None, Header()] = None) -> bytes:
    """The hash to look the token up by; 401 at once for what cannot be a token."""
    if not x_provision_token or not x_provision_token.startswith(TOKEN_PREFIX):
        raise Unauthorized(_INVALID_TOKEN)
    return hash_provision_token(x_provision_token)


TokenHash = Annotated[bytes, Depends(_token_hash)]
_INVALID_TOKEN = "invalid provision token"  # noqa: S105 - an error message


@router.get("/shadow")
async def get_shadow(request: Request, token_hash: TokenHash) -> dict[str, Any]:
    # One statement: authenticate, mark seen, read desired.
    async with _pool(request).acquire() as conn:
        row = await devices_repo.resolve_token(conn, token_hash)
    if row is None:
        raise Unauthorized(_INVALID_TOKEN)
    return {"desired": row["desired_state"], "version": row["desired_version"]}


@router.post("/shadow/reported", openapi_extra=_REPORT_BODY)
async def post_reported(request: Request, token_hash: TokenHash) -> Response:
    """Authenticate, mark seen and apply the report in one transaction (one commit)."""
    settings = _settings(request)
    report: twins.Report | None = None
    refusal: DomainError | None = None
    try:
        report = twins.parse_report(await json_body(request), settings.limits)
    except DomainError as exc:
        refusal = exc  # answered after the token: an unknown device learns nothing more
    async with transaction(_pool(request)) as conn:
        device = await devices_repo.resolve_token(conn, token_hash)
        if device is None:
            raise Unauthorized(_INVALID_TOKEN)
        if report is not None:
            outcome = await twins.apply_report(
                conn,
                tenant_id=device["tenant_id"],
                device_id=device["device_id"],
                report=report,
                limits=settings.limits,
                actor=Actor.device(),
            )
    if refusal is not None or report is None:
        REPORTS.labels("http", "malformed").inc()
        raise refusal or Unprocessable("report could not be read")
    REPORTS.labels("http", "accepted" if outcome.accepted else "version").inc()
    if outcome.schema_violations:
        REPORTED_SCHEMA_VIOLATIONS.labels("http").inc()
    return ORJSONResponse(
        outcome.as_json(report.client_token), status_code=200 if outcome.accepted else 409
    )
