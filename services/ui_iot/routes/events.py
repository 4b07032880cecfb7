"""``GET /customer/events``: the tenant's twin changes as Server-Sent Events (SPEC §8)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from shared.errors import Unauthorized
from shared.security import InvalidToken, Principal, verify_token
from shared.services import events
from shared.services.sessions import until_revoked
from shared.web import StorableJSONRoute
from ui_iot.deps import VIEWER, AppSettings, Pool

router = APIRouter(route_class=StorableJSONRoute, prefix="/customer", tags=["events"])


async def stream_principal(
    request: Request,
    settings: AppSettings,
    access_token: Annotated[
        str | None,
        Query(
            max_length=4096,
            description="the bearer token, for scripts whose client cannot send headers; the "
            "console's EventSource is signed in by its session cookie",
        ),
    ] = None,
) -> Principal:
    """The bearer header or the session cookie (as every call), or else ``?access_token=``,
    validated exactly alike, revocation included."""
    if access_token and "Authorization" not in request.headers:
        try:
            who = verify_token(access_token, secret=settings.jwt_secret)
        except InvalidToken as exc:
            raise Unauthorized("invalid or expired token") from exc
        current = await request.app.state.user_states.check(who)
        if current is None:
            raise Unauthorized("this token has been revoked; sign in again")
        return current  # type: ignore[no-any-return]
    return await VIEWER(request)


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
        # Ends when the user is disabled or deleted or their password changes.
        until_revoked(
            events.stream(
                hub,
                pool,
                tenant_id=who.tenant_id,
                last_event_id=resume_from,
                stale_after=settings.stale_after,
            ),
            request.app.state.user_states,
            who,
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
