"""Administration (SPEC §10): the tenant's users and its audit log, for admins."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shared.services import audit, users
from shared.web import StorableJSONRoute
from ui_iot.deps import Admin, AppSettings, ClientIp, Conn

router = APIRouter(route_class=StorableJSONRoute, prefix="/customer", tags=["administration"])

RoleName = Literal["viewer", "operator", "admin"]
# user ids are PostgreSQL bigints: a larger number is no user of anybody's (404, not a 500).
UserId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class User(BaseModel):
    user_id: int
    email: str
    role: str
    disabled: bool
    created_at: str
    last_login_at: str | None


class UserList(BaseModel):
    items: list[User]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    role: RoleName = "viewer"


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: RoleName | None = None
    disabled: bool | None = None


class AuditEntry(BaseModel):
    id: int
    at: str
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    ip: str | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next: str | None


_LAST_ADMIN: dict[int | str, dict[str, Any]] = {
    409: {"description": "the tenant's last enabled admin cannot lose that"}
}
_NO_USER: dict[int | str, dict[str, Any]] = {404: {"description": "no such user in your tenant"}}


@router.get("/users", response_model=UserList)
async def list_users(who: Admin, conn: Conn) -> dict[str, Any]:
    """Your tenant's operator accounts."""
    return await users.list_users(conn, tenant_id=who.tenant_id)


@router.post(
    "/users",
    status_code=201,
    response_model=User,
    responses={409: {"description": "the e-mail is taken"}, 422: {"description": "bad input"}},
)
async def create_user(
    body: UserCreate, who: Admin, conn: Conn, settings: AppSettings, ip: ClientIp
) -> dict[str, Any]:
    """Add an operator account to your tenant (at least `IOTCLOUD_MIN_PASSWORD_LENGTH`
    characters of password)."""
    return await users.create_user(
        conn,
        who,
        email=body.email,
        password=body.password,
        role=body.role,
        min_password_length=settings.min_password_length,
        ip=ip,
    )


@router.patch("/users/{user_id}", response_model=User, responses={**_LAST_ADMIN, **_NO_USER})
async def change_user(
    user_id: UserId, body: UserChange, request: Request, who: Admin, conn: Conn, ip: ClientIp
) -> dict[str, Any]:
    """Change a user's role or disable/enable them; takes effect on their tokens at once."""
    changed = await users.update_user(
        conn, who, user_id=user_id, role=body.role, disabled=body.disabled, ip=ip
    )
    request.app.state.user_states.forget(user_id)
    return changed


@router.delete("/users/{user_id}", status_code=204, responses={**_LAST_ADMIN, **_NO_USER})
async def delete_user(
    user_id: UserId, request: Request, who: Admin, conn: Conn, ip: ClientIp
) -> None:
    """Delete a user; their tokens stop working at once."""
    await users.delete_user(conn, who, user_id=user_id, ip=ip)
    request.app.state.user_states.forget(user_id)


@router.get("/audit", response_model=AuditPage)
async def audit_log(
    who: Admin,
    conn: Conn,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=320, description="exact actor")] = None,
    action: Annotated[
        str | None,
        Query(max_length=100, description="exact action, or a prefix ending in '.' (`device.`)"),
    ] = None,
) -> dict[str, Any]:
    """Your tenant's audit log, newest first: sign-ins and failures, and every change to
    users, devices, tokens, certificates, models, bulk jobs and rollouts."""
    return await audit.page(
        conn, tenant_id=who.tenant_id, limit=limit, cursor=cursor, actor=actor, action=action
    )
