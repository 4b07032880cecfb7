from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from shared.errors import Unauthorized, Unprocessable
from shared.repositories import users
from shared.security import Principal, issue_token, verify_password
from shared.web import StorableJSONRoute
from ui_iot.deps import AppSettings, Conn

router = APIRouter(route_class=StorableJSONRoute, tags=["auth"])


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type
    expires_in: int


_FORM_ONLY = (
    "POST /auth/token takes form fields, as OAuth2's password flow requires: send "
    "username=<e-mail>&password=<password> as application/x-www-form-urlencoded "
    "(curl -d username=... -d password=...), not a JSON body"
)


def form_fields_only(request: Request) -> None:
    """A JSON body (the usual first try) gets a message that says what to send instead."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in {"application/x-www-form-urlencoded", "multipart/form-data"}:
        raise Unprocessable(_FORM_ONLY)


@router.post(
    "/auth/token",
    response_model=TokenOut,
    dependencies=[Depends(form_fields_only)],
    responses={
        401: {"description": "incorrect e-mail or password"},
        422: {"description": "not form fields (a JSON body, say), or a field is missing"},
    },
)
async def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], conn: Conn, settings: AppSettings
) -> TokenOut:
    """Sign in and get a bearer token.

    The body is **form fields**, not JSON (OAuth2's password flow): `username` is the
    e-mail, `password` the password, sent as `application/x-www-form-urlencoded`, e.g.
    `curl -d username=ops@acme.test -d password=... http://127.0.0.1:8000/auth/token`.
    Use the token as `Authorization: Bearer <access_token>` until `expires_in` seconds pass.
    """
    user = await users.by_email(conn, form.username)
    if not verify_password(user["password_hash"] if user else None, form.password) or user is None:
        raise Unauthorized("incorrect e-mail or password")
    who = Principal(user["user_id"], user["email"], user["tenant_id"], user["role"])
    token = issue_token(who, secret=settings.jwt_secret, ttl_s=settings.jwt_ttl_s)
    return TokenOut(access_token=token, expires_in=settings.jwt_ttl_s)
