"""Operator accounts of a tenant (SPEC §10): the tenant's admins manage them.

A tenant always keeps one enabled admin: demoting, disabling or deleting the last one is a
409. Every change is audited in its transaction, and every change that alters what a token
means reaches each replica through the ``users`` trigger (shared.services.sessions).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.db import Connection
from shared.errors import Conflict, Forbidden, NotFound, Unprocessable
from shared.repositories import users as users_repo
from shared.security import (
    ROLES,
    Principal,
    hash_password_off_loop,
    verify_password_off_loop,
)
from shared.services import audit

MAX_EMAIL_LENGTH = 254
MAX_PASSWORD_LENGTH = 1024


def user_document(row: asyncpg.Record) -> dict[str, Any]:
    last_login = row["last_login_at"]
    return {
        "user_id": row["user_id"],
        "email": row["email"],
        "role": row["role"],
        "disabled": row["disabled"],
        "created_at": row["created_at"].isoformat(),
        "last_login_at": last_login.isoformat() if last_login else None,
    }


def check_role(role: str) -> None:
    if role not in ROLES:
        raise Unprocessable(f"role must be one of {', '.join(ROLES)}, got {role!r}")


def check_email(email: str) -> None:
    local, at, domain = email.partition("@")
    if not at or not local or not domain or len(email) > MAX_EMAIL_LENGTH or "\x00" in email:
        raise Unprocessable("email must be an e-mail address")
    if any(ch.isspace() for ch in email):
        raise Unprocessable("email must not contain spaces")


def check_password(password: str, *, min_length: int) -> None:
    if len(password) < min_length:
        raise Unprocessable(f"password must be at least {min_length} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise Unprocessable(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    if "\x00" in password:
        raise Unprocessable("password must not contain NUL characters")


async def list_users(conn: Connection, *, tenant_id: str) -> dict[str, Any]:
    return {
        "items": [user_document(row) for row in await users_repo.list_for_tenant(conn, tenant_id)]
    }


async def create_user(
    conn: Connection,
    who: Principal,
    *,
    email: str,
    password: str,
    role: str,
    min_password_length: int,
    ip: str | None,
) -> dict[str, Any]:
    check_role(role)
    check_email(email)
    check_password(password, min_length=min_password_length)
    user_id = await users_repo.insert(
        conn,
        tenant_id=who.tenant_id,
        email=email,
        password_hash=await hash_password_off_loop(password),
        role=role,
    )
    if user_id is None:
        raise Conflict(f"a user with e-mail {email!r} already exists")
    await audit.record(conn, who, "user.create", email, {"user_id": user_id, "role": role}, ip)
    row = await users_repo.get_in_tenant(conn, tenant_id=who.tenant_id, user_id=user_id)
    assert row is not None  # inserted in this transaction
    return user_document(row)


async def _target(conn: Connection, tenant_id: str, user_id: int) -> asyncpg.Record:
    row = await users_repo.get_in_tenant(conn, tenant_id=tenant_id, user_id=user_id)
    if row is None:
        raise NotFound(f"user {user_id} not found")
    return row


def _refuse_last_admin(target: asyncpg.Record, admins: list[int], what: str) -> None:
    if target["user_id"] in admins and len(admins) == 1:
        raise Conflict(f"cannot {what} {target['email']}: the tenant's last enabled admin")


async def update_user(
    conn: Connection,
    who: Principal,
    *,
    user_id: int,
    role: str | None,
    disabled: bool | None,
    ip: str | None,
) -> dict[str, Any]:
    if role is not None:
        check_role(role)
    admins = await users_repo.lock_tenant_admins(conn, who.tenant_id)
    target = await _target(conn, who.tenant_id, user_id)
    if role is not None and role != "admin":
        _refuse_last_admin(target, admins, "demote")
    if disabled:
        _refuse_last_admin(target, admins, "disable")
    row = await users_repo.update(
        conn, tenant_id=who.tenant_id, user_id=user_id, role=role, disabled=disabled
    )
    assert row is not None  # locked above
    email = target["email"]
    if role is not None and role != target["role"]:
        await audit.record(
            conn, who, "user.set_role", email, {"from": target["role"], "to": role}, ip
        )
    if disabled is not None and disabled != target["disabled"]:
        await audit.record(conn, who, "user.disable" if disabled else "user.enable", email, {}, ip)
    return user_document(row)


async def delete_user(conn: Connection, who: Principal, *, user_id: int, ip: str | None) -> None:
    admins = await users_repo.lock_tenant_admins(conn, who.tenant_id)
    target = await _target(conn, who.tenant_id, user_id)
    _refuse_last_admin(target, admins, "delete")
    await users_repo.delete(conn, tenant_id=who.tenant_id, user_id=user_id)
    await audit.record(conn, who, "user.delete", target["email"], {"user_id": user_id}, ip)


async def change_password(
    conn: Connection,
    who: Principal,
    *,
    current_password: str,
    new_password: str,
    min_password_length: int,
    ip: str | None,
) -> int:
    """Set the caller's new password and revoke all their tokens; the new token_version."""
    check_password(new_password, min_length=min_password_length)
    user = await users_repo.by_id(conn, who.user_id)
    if user is None or not await verify_password_off_loop(user["password_hash"], current_password):
        raise Forbidden("the current password is not right")
    version = await users_repo.set_password(
        conn, user_id=who.user_id, password_hash=await hash_password_off_loop(new_password)
    )
    await audit.record(conn, who, "user.password_change", who.email, {}, ip)
    return version
