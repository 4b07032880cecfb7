from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from shared.errors import Unauthorized
from shared.repositories import users
from shared.security import Principal, issue_token, verify_password
from shared.web import StorableJSONRoute
from ui_iot.deps import AppSettings, Conn

router = APIRouter(route_class=StorableJSONRoute, tags=["auth"])


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type
    expires_in: int


@router.post("/auth/token", response_model=TokenOut)
async def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], conn: Conn, settings: AppSettings
) -> TokenOut:
    user = await users.by_email(conn, form.username)
    if not verify_password(user["password_hash"] if user else None, form.password) or user is None:
        raise Unauthorized("incorrect e-mail or password")
    who = Principal(user["user_id"], user["email"], user["tenant_id"], user["role"])
    token = issue_token(who, secret=settings.jwt_secret, ttl_s=settings.jwt_ttl_s)
    return TokenOut(access_token=token, expires_in=settings.jwt_ttl_s)
