"""Operator routes for named shadows (SPEC §9): the classic routes' twin, per name."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response

from shared import twin
from shared.errors import NotFound, Unprocessable
from shared.ids import is_shadow_name
from shared.repositories import devices as devices_repo
from shared.repositories import shadows as shadows_repo
from shared.services import history, twins
from shared.services.history import Actor
from shared.web import StorableJSONRoute, json_body
from ui_iot.deps import AppSettings, Conn, Operator, Viewer
from ui_iot.routes.devices import _etag, _parse_if_match

router = APIRouter(route_class=StorableJSONRoute, prefix="/customer/devices", tags=["shadows"])


def _checked(name: str) -> str:
    """A shadow name by AWS's rule (``[a-zA-Z0-9:_-]{1,64}``), else 422."""
    if not is_shadow_name(name):
        raise Unprocessable(
            f"shadow name {name[:80]!r} is not valid: 1 to 64 of a-z, A-Z, 0-9, ':', '_', '-'"
        )
    return name


async def _document(
    conn: Conn, tenant_id: str, device_id: str, name: str, settings: AppSettings
) -> dict[str, Any]:
    row = await shadows_repo.get(conn, tenant_id=tenant_id, device_id=device_id, shadow=name)
    if row is None:
        if not await devices_repo.live_belongs(conn, tenant_id=tenant_id, device_id=device_id):
            raise NotFound(f"device {device_id!r} not found")
        raise NotFound(f"device {device_id!r} has no shadow named {name!r}")
    return twins.shadow_document(row, stale_after=settings.stale_after)


@router.get("/{device_id}/shadows")
async def list_shadows(device_id: str, who: Viewer, conn: Conn) -> dict[str, Any]:
    """The device's named shadows (the classic one is ``/twin``), by name."""
    if not await devices_repo.live_belongs(conn, tenant_id=who.tenant_id, device_id=device_id):
        raise NotFound(f"device {device_id!r} not found")
    rows = await shadows_repo.names(conn, tenant_id=who.tenant_id, device_id=device_id)
    return {
        "device_id": device_id,
        "items": [
            {
                "name": row["name"],
                "desired_version": row["desired_version"],
                "reported_version": row["reported_version"],
                "version": row["document_version"],
                "shadow_updated_at": row["shadow_updated_at"].isoformat(),
            }
            for row in rows
        ],
    }


@router.get("/{device_id}/shadows/{name}/twin")
async def get_shadow(
    device_id: str, name: str, who: Viewer, conn: Conn, settings: AppSettings, response: Response
) -> dict[str, Any]:
    document = await _document(conn, who.tenant_id, device_id, _checked(name), settings)
    response.headers["ETag"] = _etag(document["desired_version"])
    return document


@router.patch("/{device_id}/shadows/{name}/twin/desired")
async def patch_shadow_desired(
    device_id: str,
    name: str,
    request: Request,
    who: Operator,
    conn: Conn,
    settings: AppSettings,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Merge-patch a named shadow's desired state; its first update creates it."""
    shadow = _checked(name)
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("desired"), dict):
        raise Unprocessable('body must be {"desired": {...}}, a JSON merge patch object')
    document = await twins.patch_desired(
        conn,
        tenant_id=who.tenant_id,
        device_id=device_id,
        patch=body["desired"],
        limits=settings.limits,
        stale_after=settings.stale_after,
        actor=Actor.user(who.email),
        if_match=_parse_if_match(if_match),
        shadow=shadow,
        max_shadows=settings.max_shadows,
    )
    response.headers["ETag"] = _etag(document["desired_version"])
    return document


@router.get("/{device_id}/shadows/{name}/twin/delta")
async def get_shadow_delta(
    device_id: str, name: str, who: Viewer, conn: Conn, settings: AppSettings
) -> dict[str, Any]:
    document = await _document(conn, who.tenant_id, device_id, _checked(name), settings)
    return {
        "device_id": device_id,
        "shadow": document["shadow"],
        "delta": document["delta"],
        "in_sync": twin.in_sync(
            document["delta"], document["desired_version"], document["reported_version"]
        ),
        "desired_version": document["desired_version"],
        "reported_version": document["reported_version"],
        "sync_status": document["sync_status"],
    }


@router.get("/{device_id}/shadows/{name}/twin/history")
async def get_shadow_history(
    device_id: str,
    name: str,
    who: Viewer,
    conn: Conn,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """A named shadow's accepted writes, newest first (kept after the shadow is deleted,
    until retention removes them, like the classic shadow's)."""
    shadow = _checked(name)
    if not await devices_repo.live_belongs(conn, tenant_id=who.tenant_id, device_id=device_id):
        raise NotFound(f"device {device_id!r} not found")
    return await history.page(
        conn,
        tenant_id=who.tenant_id,
        device_id=device_id,
        cursor=cursor,
        limit=limit,
        shadow=shadow,
    )


@router.delete("/{device_id}/shadows/{name}", status_code=204)
async def delete_shadow(device_id: str, name: str, who: Operator, conn: Conn) -> Response:
    shadow = _checked(name)
    if not await twins.delete_shadow(
        conn, tenant_id=who.tenant_id, device_id=device_id, shadow=shadow
    ):
        if not await devices_repo.live_belongs(conn, tenant_id=who.tenant_id, device_id=device_id):
            raise NotFound(f"device {device_id!r} not found")
        raise NotFound(f"device {device_id!r} has no shadow named {shadow!r}")
    return Response(status_code=204)
