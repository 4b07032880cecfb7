"""Signing in: bearer tokens for scripts, the cookie session for the console, and changing
one's own password (SPEC §5, §10)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from shared.errors import Unprocessable
from shared.security import Principal, issue_token
from shared.services import users
from shared.services.sign_in import Throttled, sign_in
from shared.settings import Settings
from shared.web import StorableJSONRoute
from ui_iot import session
from ui_iot.deps import VIEWER, AppSettings, ClientIp, Conn, Pool, Viewer

router = APIRouter(route_class=StorableJSONRoute, tags=["auth"])

_THROTTLED: dict[int | str, dict[str, Any]] = {
    429: {"description": "too many failed sign-ins: wait `Retry-After` seconds"}
}


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type
    expires_in: int


class SessionOut(BaseModel):
    user_id: int
    email: str
    tenant_id: str
    role: str
    csrf_token: str | None = None
    expires_in: int | None = None


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


async def _sign_in(
    form: OAuth2PasswordRequestForm, pool: Pool, settings: Settings, ip: str | None
) -> Principal:
    try:
        return await sign_in(
            pool, email=form.username, password=form.password, ip=ip, settings=settings
        )
    except Throttled as exc:
        raise HTTPException(
            429, exc.detail, headers={"Retry-After": str(exc.retry_after_s)}
        ) from None


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
        **_THROTTLED,
    },
)
async def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    pool: Pool,
    settings: AppSettings,
    ip: ClientIp,
) -> TokenOut:
    """Sign in and get a bearer token.

    The body is **form fields**, not JSON (OAuth2's password flow): `username` is the
    e-mail, `password` the password, sent as `application/x-www-form-urlencoded`, e.g.
    `curl -d username=ops@acme.test -d password=... http://127.0.0.1:8000/auth/token`.
    Use the token as `Authorization: Bearer <access_token>` until `expires_in` seconds pass.
    """
    who = await _sign_in(form, pool, settings, ip)
    token = issue_token(who, secret=settings.jwt_secret, ttl_s=settings.jwt_ttl_s)
    return TokenOut(access_token=token, expires_in=settings.jwt_ttl_s)


@router.post("/auth/session", response_model=SessionOut, responses=_THROTTLED)
async def open_session(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    request: Request,
    response: Response,
    pool: Pool,
    settings: AppSettings,
    ip: ClientIp,
) -> SessionOut:
    """Sign the console in: an HttpOnly session cookie, and the CSRF token its writes send
    as `X-CSRF-Token` (also in the readable `iotcloud_csrf` cookie)."""
    who = await _sign_in(form, pool, settings, ip)
    token = issue_token(who, secret=settings.jwt_secret, ttl_s=settings.jwt_ttl_s)
    csrf = session.set_session(
        response, request, token, secret=settings.jwt_secret, ttl_s=settings.jwt_ttl_s
    )
    return SessionOut(
        user_id=who.user_id,
        email=who.email,
        tenant_id=who.tenant_id,
        role=who.role,
        csrf_token=csrf,
        expires_in=settings.jwt_ttl_s,
    )


@router.get("/auth/session", response_model=SessionOut)
async def current_session(who: Viewer) -> SessionOut:
    """Who is signed in (by cookie or bearer token), with the role they hold now."""
    return SessionOut(user_id=who.user_id, email=who.email, tenant_id=who.tenant_id, role=who.role)


@router.delete("/auth/session", status_code=204)
async def close_session(request: Request, response: Response) -> None:
    """Sign the console out (clears the cookies; other sessions stay signed in)."""
    session.clear_session(response, request)


@router.post(
    "/auth/password",
    status_code=204,
    responses={403: {"description": "the current password is not right"}},
)
async def change_password(
    body: PasswordChange,
    who: Annotated[Principal, Depends(VIEWER)],
    request: Request,
    response: Response,
    conn: Conn,
    settings: AppSettings,
    ip: ClientIp,
) -> None:
    """Change your own password. Every token issued before stops working at once, on every
    replica; a console session gets a fresh cookie, a script signs in again."""
    version = await users.change_password(
        conn,
        who,
        current_password=body.current_password,
        new_password=body.new_password,
        min_password_length=settings.min_password_length,
        ip=ip,
    )
    request.app.state.user_states.forget(who.user_id)
    if request.cookies.get(session.SESSION_COOKIE) and not request.headers.get("Authorization"):
        renewed = Principal(who.user_id, who.email, who.tenant_id, who.role, version)
        token = issue_token(renewed, secret=settings.jwt_secret, ttl_s=settings.jwt_ttl_s)
        session.set_session(
            response, request, token, secret=settings.jwt_secret, ttl_s=settings.jwt_ttl_s
        )
