"""Operator routes for device models: JSON Schema (2020-12) for the twin (SPEC §8)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import NotFound, Unprocessable
from shared.ids import MODEL_ID_PATTERN, is_model_id
from shared.services import audit, model_revalidation, models
from shared.web import StorableJSONRoute
from ui_iot.deps import Admin, AppSettings, ClientIp, Conn, Viewer

router = APIRouter(route_class=StorableJSONRoute, prefix="/customer/models", tags=["models"])


_SCHEMA_ERRORS = (
    "`detail` is `{message, errors: [{pointer, rule, message}]}`; `pointer` is the JSON "
    "pointer into the request body (e.g. `/desired_schema/properties/x/type`)"
)


class ModelSchemas(BaseModel):
    model_config = ConfigDict(extra="forbid")

    desired_schema: dict[str, Any] = Field(
        description="JSON Schema 2020-12 for the desired state; local `$ref`s only"
    )
    reported_schema: dict[str, Any] | None = Field(
        default=None,
        description="JSON Schema 2020-12 for the reported state; reports that break it are "
        "accepted and flagged in the twin's `reported_schema_errors`",
    )


class ModelCreate(ModelSchemas):
    model_id: str = Field(pattern=MODEL_ID_PATTERN)


class Model(BaseModel):
    model_id: str
    desired_schema: dict[str, Any]
    reported_schema: dict[str, Any] | None
    created_at: str
    updated_at: str


class ModelWithCount(Model):
    device_count: int


class ModelPage(BaseModel):
    items: list[Model]
    next: str | None


@router.post(
    "",
    status_code=201,
    response_model=Model,
    responses={
        409: {"description": "the model id is taken: change a model with PUT"},
        422: {"description": "invalid schema: " + _SCHEMA_ERRORS},
    },
)
async def create_model(
    body: ModelCreate, who: Admin, conn: Conn, settings: AppSettings, ip: ClientIp
) -> dict[str, Any]:
    """Create a model. Its id is unique within the tenant; to change it, use PUT."""
    await audit.record(conn, who, "model.create", body.model_id, {}, ip)
    return await models.create_model(
        conn,
        tenant_id=who.tenant_id,
        model_id=body.model_id,
        desired_schema=body.desired_schema,
        reported_schema=body.reported_schema,
        limits=settings.limits,
    )


@router.get("", response_model=ModelPage)
async def list_models(
    who: Viewer,
    conn: Conn,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    if cursor is not None and not is_model_id(cursor):
        raise Unprocessable("cursor is not valid")
    return await models.list_models(conn, tenant_id=who.tenant_id, cursor=cursor, limit=limit)


@router.get("/{model_id}", response_model=ModelWithCount)
async def get_model(model_id: Annotated[str, Path()], who: Viewer, conn: Conn) -> dict[str, Any]:
    if not is_model_id(model_id):
        raise NotFound(f"model {model_id!r} not found")
    return await models.get_model(conn, tenant_id=who.tenant_id, model_id=model_id)


class Revalidation(BaseModel):
    job_id: str
    model_id: str
    status: str = Field(description="running, applied or refused")
    total: int = Field(description="devices of the model when the change was asked for")
    checked: int
    invalid_count: int = Field(description="devices whose desired state would break")
    devices: list[dict[str, Any]] = Field(
        description="at most 5 of them: `{device_id, errors: [{pointer, rule, message}]}`"
    )
    created_by: str
    created_at: str
    finished_at: str | None


@router.put(
    "/{model_id}",
    status_code=202,
    response_model=Revalidation,
    responses={
        404: {"description": "no such model in your tenant (create it with POST)"},
        409: {"description": "another change of this model is still being checked"},
        422: {"description": "invalid schema: " + _SCHEMA_ERRORS},
    },
)
async def replace_model(
    model_id: Annotated[str, Path()],
    body: ModelSchemas,
    request: Request,
    who: Admin,
    conn: Conn,
    settings: AppSettings,
    ip: ClientIp,
) -> dict[str, Any]:
    """Change a model's schemas. The current desired state of its devices is checked by a
    background job (follow it at `GET /customer/models/{id}/revalidations/{job_id}`): the
    change is applied when every device passes, and refused (`status: refused`, with the
    devices that would break) otherwise. The reported_schema may change freely."""
    if not is_model_id(model_id):
        raise NotFound(f"model {model_id!r} not found")
    job = await model_revalidation.start(
        conn,
        tenant_id=who.tenant_id,
        model_id=model_id,
        desired_schema=body.desired_schema,
        reported_schema=body.reported_schema,
        limits=settings.limits,
        created_by=who.email,
    )
    await audit.record(conn, who, "model.update", model_id, {"job_id": job["job_id"]}, ip)
    request.app.state.revalidations.wake.set()
    return job


@router.get(
    "/{model_id}/revalidations/{job_id}",
    response_model=Revalidation,
    responses={404: {"description": "no such job of this model in your tenant"}},
)
async def get_revalidation(
    model_id: Annotated[str, Path()], job_id: str, who: Viewer, conn: Conn
) -> dict[str, Any]:
    """The progress and outcome of a change of the model's schemas."""
    if not is_model_id(model_id):
        raise NotFound(f"model {model_id!r} not found")
    return await model_revalidation.get(
        conn, tenant_id=who.tenant_id, model_id=model_id, job_id=job_id
    )
