"""Signing in with e-mail and password: throttled, audited, argon2 off the event loop.

Failed attempts count per account and per client address (in the database, so every
replica counts together); at the limit the key is locked out for a while, longer for each
further failure, and attempts under a lock-out are refused with 429 before any password is
checked. Each attempt and each lock-out is audited; a failure's entry commits even though
the request fails.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import asyncpg

from shared.errors import DomainError, Unauthorized
from shared.repositories import sign_in_failures as failures_repo
from shared.repositories import users as users_repo
from shared.security import Principal, verify_password_off_loop
from shared.services import audit
from shared.settings import Settings

FAILURE_WINDOW_S = 15 * 60


class Throttled(DomainError):
    status_code = 429

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("too many failed sign-ins; try again later")
        self.retry_after_s = retry_after_s


def _retry_after(until: datetime) -> int:
    return max(1, math.ceil((until - datetime.now(UTC)).total_seconds()))


async def sign_in(
    pool: asyncpg.Pool, *, email: str, password: str, ip: str | None, settings: Settings
) -> Principal:
    account_key = f"account:{email.strip().lower()}"
    ip_key = f"ip:{ip or 'unknown'}"
    async with pool.acquire() as conn:
        locked = await failures_repo.locked_until(conn, [account_key, ip_key])
        user = None if locked else await users_repo.by_email(conn, email)
    if locked is not None:
        raise Throttled(_retry_after(locked))
    good = await verify_password_off_loop(user["password_hash"] if user else None, password)
    tenant_id = user["tenant_id"] if user is not None else None
    async with pool.acquire() as conn, conn.transaction():
        if good and user is not None and not user["disabled"]:
            await failures_repo.clear(conn, account_key)
            await users_repo.signed_in(conn, user["user_id"])
            await audit.record(
                conn, user["email"], "auth.sign_in", user["email"], {}, ip, tenant_id=tenant_id
            )
            return Principal(
                user["user_id"],
                user["email"],
                user["tenant_id"],
                user["role"],
                user["token_version"],
            )
        reason = "disabled" if good else ("wrong password" if user else "unknown e-mail")
        await audit.record(
            conn,
            email[:320],
            "auth.sign_in_failed",
            email[:320],
            {"reason": reason},
            ip,
            tenant_id=tenant_id,
        )
        for key, limit in (
            (account_key, settings.sign_in_account_failures),
            (ip_key, settings.sign_in_ip_failures),
        ):
            until = await failures_repo.count_failure(
                conn,
                key=key,
                limit=limit,
                window_s=FAILURE_WINDOW_S,
                lockout_s=settings.sign_in_lockout_s,
            )
            if until is not None:
                await audit.record(
                    conn,
                    "iotcloud",
                    "auth.sign_in_throttled",
                    key[:320],
                    {"until": until.isoformat(), "email": email[:320]},
                    ip,
                    tenant_id=tenant_id,
                )
    raise Unauthorized("incorrect e-mail or password")
