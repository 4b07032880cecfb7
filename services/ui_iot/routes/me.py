"""``GET /auth/me``: who the bearer token is, in which tenant, and what that role may do, so
the console can show it and hide or disable what would only end in a 403."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from shared.security import role_at_least
from shared.web import StorableJSONRoute
from ui_iot.deps import Conn, Viewer

router = APIRouter(route_class=StorableJSONRoute, tags=["auth"])


class Permissions(BaseModel):
    """What the role allows (SPEC §5): viewer reads; operator also writes desired state
    (one device or a bulk job); admin also manages devices, models and users."""

    write_desired: bool
    run_bulk_jobs: bool
    manage_devices: bool
    manage_models: bool
    manage_users: bool


class Me(BaseModel):
    user_id: int
    email: str
    tenant_id: str
    tenant_name: str
    role: str
    permissions: Permissions


@router.get("/auth/me", response_model=Me)
async def me(who: Viewer, conn: Conn) -> Me:
    """The signed-in operator as the token says, with the tenant's display name."""
    tenant_name = await conn.fetchval(
        "SELECT name FROM tenants WHERE tenant_id = $1", who.tenant_id
    )
    operator, admin = role_at_least(who.role, "operator"), role_at_least(who.role, "admin")
    return Me(
        user_id=who.user_id,
        email=who.email,
        tenant_id=who.tenant_id,
        tenant_name=tenant_name or who.tenant_id,
        role=who.role,
        permissions=Permissions(
            write_desired=operator,
            run_bulk_jobs=operator,
            manage_devices=admin,
            manage_models=admin,
            manage_users=admin,
        ),
    )
