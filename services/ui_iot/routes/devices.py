"""Operator routes for the device registry and the device twin (SPEC §5)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from shared import twin
from shared.db import transaction
from shared.errors import NotFound, PreconditionFailed, Unprocessable
from shared.ids import DEVICE_ID_PATTERN, MODEL_ID_PATTERN, parse_bigint_id
from shared.repositories import devices as devices_repo
from shared.services import device_batches, device_profiles, devices, history, twins
from shared.services.history import Actor
from shared.services.twin_reads import TwinReads
from shared.web import ORJSONResponse, StorableJSONRoute, app_settings, json_body, json_body_schema
from ui_iot.deps import VIEWER, Admin, AppSettings, Conn, Operator, Pool, Viewer
from ui_iot.routes.shadow_fleet import shadow_devices


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Twin reads are coalesced (``shared.services.twin_reads``) by a loop of each app's,
    started once the app's pool exists (FastAPI runs a router's lifespan inside its app's)."""
    app.state.twin_reads = reads = TwinReads(app.state.pool)
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(reads.run(), name="twin-reads")
        try:
            yield
        finally:
            running.cancel()


router = APIRouter(
    route_class=StorableJSONRoute, prefix="/customer/devices", tags=["devices"], lifespan=_lifespan
)


class DeviceCreate(BaseModel):
    device_id: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)
    name: str | None = Field(default=None, max_length=200)


class DeviceCreated(BaseModel):
    device_id: str
    tenant_id: str
    provision_token: str


class BatchEntry(BaseModel):
    """Checked by ``shared.services.device_batches`` (the CSV import shares the rules), so
    a bad entry is a 422 naming its index rather than a schema error."""

    model_config = ConfigDict(extra="forbid")

    device_id: str | None = None
    name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    model_id: str | None = None


class DeviceBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[BatchEntry] = Field(min_length=1, max_length=device_batches.MAX_BATCH)


class BatchDevice(BaseModel):
    device_id: str
    provision_token: str


class BatchCreated(BaseModel):
    items: list[BatchDevice]


class TokenRotated(BaseModel):
    provision_token: str


class DevicePatch(BaseModel):
    """Fields left out are unchanged. ``tags`` is a merge patch of string values (``null``
    deletes a tag); ``model_id: null`` detaches the device from its model."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    tags: dict[str, str | None] | None = None
    model_id: str | None = Field(default=None, pattern=MODEL_ID_PATTERN)


_PATCH_DESIRED_BODY = json_body_schema(
    {
        "type": "object",
        "required": ["desired"],
        "properties": {"desired": {"type": "object", "description": "JSON merge patch"}},
    }
)


def _etag(version: int) -> str:
    return f'"{version}"'


def _parse_if_match(value: str | None) -> int | None:
    """The desired version an ``If-Match`` asks for; None for no condition (absent or ``*``).

    A header that is not one of our entity tags can never match, so it fails the
    precondition (412) like a stale one: nothing is written either way.
    """
    if value is None or value.strip() == "*":
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    version = parse_bigint_id(text.strip('"'))
    if version is None:
        raise PreconditionFailed(
            f"If-Match must be one entity tag like '\"3\"' (or *), got {value!r}"
        )
    return version


def _twin_reads(request: Request) -> TwinReads:
    reads: TwinReads = request.app.state.twin_reads
    return reads


# The hottest route comes first: FastAPI tries a router's routes in order, twice per request.
# It also takes no parameters for FastAPI to resolve (a fifth of its cost): it authenticates
# with the same ``Caller`` itself and declares its parameter and security scheme to OpenAPI.
@router.get(
    "/{device_id}/twin",
    response_model=dict[str, Any],
    openapi_extra={
        "parameters": [
            {
                "name": "device_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "title": "Device Id"},
            }
        ],
        "security": [{VIEWER.scheme_name: []}],
    },
    responses={
        401: {"description": "missing, invalid or expired token"},
        404: {"description": "no such device in your tenant"},
    },
)
async def get_twin(request: Request) -> Response:
    who = await VIEWER(request)
    device_id: str = request.path_params["device_id"]
    document = await _twin_reads(request).get_twin(
        tenant_id=who.tenant_id, device_id=device_id, stale_after=app_settings(request).stale_after
    )
    # Rendered here: FastAPI's own serialisation (jsonable_encoder) walks the whole document.
    return ORJSONResponse(document, headers={"ETag": _etag(document["desired_version"])})


@router.get("")
async def list_devices(
    who: Viewer,
    conn: Conn,
    settings: AppSettings,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    sync_status: str | None = None,
    tag: Annotated[list[str] | None, Query(description="key:value; repeat to AND")] = None,
    model_id: str | None = None,
    q: Annotated[str | None, Query(description="text in the device id or name")] = None,
    connected: Annotated[
        bool | None, Query(description="true: connected to the broker now; false: not")
    ] = None,
    shadow: Annotated[
        str | None, Query(description="a named shadow: its devices, by its sync_status")
    ] = None,
) -> dict[str, Any]:
    if shadow is not None:
        if tag or model_id is not None or q is not None or connected is not None:
            raise Unprocessable("shadow= combines with sync_status=, limit= and cursor= only")
        return await shadow_devices(
            conn,
            tenant_id=who.tenant_id,
            shadow=shadow,
            sync_status=sync_status,
            cursor=cursor,
            limit=limit,
            settings=settings,
        )
    return await devices.list_devices(
        conn,
        tenant_id=who.tenant_id,
        device_filter=devices.device_filter(
            sync_status=sync_status,
            tags=devices.parse_tag_filters(tag or []),
            model_id=model_id,
            text=q,
            connected=connected,
        ),
        cursor=cursor,
        limit=limit,
        stale_after=settings.stale_after,
    )


@router.post("", status_code=201, response_model=DeviceCreated)
async def create_device(body: DeviceCreate, who: Admin, pool: Pool) -> dict[str, str]:
    async with transaction(pool) as conn:
        created = await devices.create_device(
            conn, tenant_id=who.tenant_id, device_id=body.device_id, name=body.name
        )
    return created.as_json()


@router.post(
    "/batch",
    status_code=201,
    response_model=BatchCreated,
    responses={
        409: {
            "description": "ids repeated in the batch or already taken (now or before, in any "
            "tenant): `detail.conflicts` lists `{index, device_id}`; nothing is written"
        },
        422: {
            "description": "bad entries (`detail.errors` lists `{index, device_id, message}`), "
            "an unknown model, or not 1 to 1000 entries; nothing is written"
        },
    },
)
async def create_device_batch(body: DeviceBatch, who: Admin, pool: Pool) -> dict[str, Any]:
    """Register up to 1000 devices in one transaction, all or nothing; each token is shown
    once, in entry order."""
    specs = [
        device_batches.DeviceSpec(
            device_id=entry.device_id, name=entry.name, tags=entry.tags, model_id=entry.model_id
        )
        for entry in body.devices
    ]
    async with transaction(pool) as conn:
        created = await device_batches.create_devices(conn, tenant_id=who.tenant_id, specs=specs)
    return {"items": [device.as_json() for device in created]}


@router.get("/{device_id}")
async def get_device(
    device_id: str, who: Viewer, conn: Conn, settings: AppSettings
) -> dict[str, Any]:
    return await device_profiles.profile(
        conn, tenant_id=who.tenant_id, device_id=device_id, stale_after=settings.stale_after
    )


@router.patch(
    "/{device_id}",
    responses={
        404: {"description": "no such device in your tenant"},
        422: {
            "description": "malformed patch, unknown model, more than 64 tags, or the "
            "device's current desired state does not match the model's desired_schema "
            "(`detail.errors` lists `{pointer, rule, message}`)"
        },
    },
)
async def update_device(
    device_id: str, body: DevicePatch, who: Admin, conn: Conn, settings: AppSettings
) -> dict[str, Any]:
    """Rename, merge tags, set or clear the device model. Returns the device with `model_id`."""
    if "name" in body.model_fields_set and body.name is None:
        raise Unprocessable("name cannot be null")
    return await device_profiles.update_device(
        conn,
        tenant_id=who.tenant_id,
        device_id=device_id,
        name=body.name,
        tags=body.tags,
        model_id=body.model_id,
        change_model="model_id" in body.model_fields_set,
        stale_after=settings.stale_after,
    )


@router.delete("/{device_id}", status_code=204)
async def delete_device(device_id: str, who: Admin, pool: Pool) -> Response:
    """The broker cuts the device's session when the deletion commits (it LISTENs)."""
    async with transaction(pool) as conn:
        await devices.delete_device(conn, tenant_id=who.tenant_id, device_id=device_id)
    return Response(status_code=204)


@router.post("/{device_id}/provision-token", response_model=TokenRotated)
async def rotate_token(device_id: str, who: Admin, pool: Pool) -> dict[str, str]:
    """The old token stops working at commit; the broker cuts a session that used it."""
    async with transaction(pool) as conn:
        token = await devices.rotate_token(conn, tenant_id=who.tenant_id, device_id=device_id)
    return {"provision_token": token}


@router.patch("/{device_id}/twin/desired", openapi_extra=_PATCH_DESIRED_BODY)
async def patch_desired(
    device_id: str,
    request: Request,
    who: Operator,
    conn: Conn,
    settings: AppSettings,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
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
    )
    response.headers["ETag"] = _etag(document["desired_version"])
    return document


@router.get("/{device_id}/twin/history")
async def get_history(
    device_id: str,
    who: Viewer,
    conn: Conn,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Accepted desired writes and reports, newest first; pass `next` as `cursor` for older."""
    if not await devices_repo.live_belongs(conn, tenant_id=who.tenant_id, device_id=device_id):
        raise NotFound(f"device {device_id!r} not found")
    return await history.page(
        conn, tenant_id=who.tenant_id, device_id=device_id, cursor=cursor, limit=limit
    )


@router.get("/{device_id}/twin/delta")
async def get_delta(device_id: str, who: Viewer, request: Request) -> dict[str, Any]:
    document = await _twin_reads(request).get_twin(
        tenant_id=who.tenant_id, device_id=device_id, stale_after=app_settings(request).stale_after
    )
    return {
        "device_id": device_id,
        "delta": document["delta"],
        "in_sync": twin.in_sync(
            document["delta"], document["desired_version"], document["reported_version"]
        ),
        "desired_version": document["desired_version"],
        "reported_version": document["reported_version"],
        "sync_status": document["sync_status"],
    }
