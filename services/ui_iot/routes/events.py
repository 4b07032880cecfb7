"""``GET /customer/events``: the tenant's twin changes as Server-Sent Events (SPEC §8)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import Forbidden, Unauthorized
from shared.security import InvalidToken, Principal, decode_token, role_at_least
from shared.services import events
from shared.web import StorableJSONRoute
from ui_iot.deps import AppSettings, Pool

router = APIRouter(route_class=StorableJSONRoute, prefix="/customer", tags=["events"])

_bearer = HTTPBearer(auto_error=False)


def stream_principal(
    settings: AppSettings,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    access_token: Annotated[
        str | None,
        Query(
            max_length=4096,
            description="the bearer token, for clients that cannot send headers (EventSource)",
        ),
    ] = None,
) -> Principal:
    """The bearer header, or else ``?access_token=``, validated exactly alike."""
    token = credentials.credentials if credentials is not None else access_token
    if not token:
        raise Unauthorized("missing bearer token")
    try:
        who = decode_token(token, secret=settings.jwt_secret)
    except InvalidToken as exc:
        raise Unauthorized("invalid or expired token") from exc
    if not role_at_least(who.role, "viewer"):
        raise Forbidden(f"this needs the viewer role; you are {who.role}")
    return who


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: twin` with `data: {device_id, desired_version, "
            "reported_version, sync_status, at}` and `id: <n>`; `event: deleted` when a "
            "device is deleted; `event: presence` with `data: {device_id, connected, "
            "connected_at, disconnected_at, at}` when a device connects to or disconnects "
            "from the broker; `: heartbeat` comments every 15 s",
        }
    },
)
async def stream_events(
    request: Request,
    who: Annotated[Principal, Depends(stream_principal)],
    settings: AppSettings,
    pool: Pool,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[
        str | None, Query(description="resume after this event id (as Last-Event-ID)")
    ] = None,
) -> StreamingResponse:
    """Live twin changes of your tenant. Reconnect with `Last-Event-ID` to resume."""
    resume_from = events.parse_last_event_id(last_event_id or after)
    hub: events.EventHub = request.app.state.events
    return StreamingResponse(
        events.stream(
            hub,
            pool,
            tenant_id=who.tenant_id,
            last_event_id=resume_from,
            stale_after=settings.stale_after,
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
