"""The audit log (SPEC §10): who did what to which user, device, token, certificate, model,
bulk job or rollout, and every sign-in.

Call :func:`record` on the connection of the change, inside its transaction: the entry
commits with the change or not at all. Actions are ``<object>.<verb>`` (``device.create``,
``user.disable``, ``auth.sign_in_failed``); ``GET /customer/audit?action=device.`` selects
all of one object's.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared import db
from shared.db import Connection
from shared.errors import Unprocessable
from shared.repositories import audit as audit_repo
from shared.security import Principal

log = logging.getLogger(__name__)

MAX_PAGE = 500
_RETENTION_BATCH = 5000


def actor_of(who: Principal | str) -> str:
    """An operator is named by e-mail (what people search for); the CLI and system jobs by a
    fixed name such as ``iotcloud-cli``."""
    return who.email if isinstance(who, Principal) else who


async def record(
    conn: Connection,
    actor: Principal | str,
    action: str,
    target: str = "",
    detail: Mapping[str, Any] | None = None,
    ip: str | None = None,
    *,
    tenant_id: str | None = None,
) -> None:
    """Append one entry. The tenant is the principal's, unless ``tenant_id`` names it (an
    actor that is not an operator, or an event in another tenant than the actor's)."""
    if tenant_id is None and isinstance(actor, Principal):
        tenant_id = actor.tenant_id
    await audit_repo.insert(
        conn,
        tenant_id=tenant_id,
        actor=actor_of(actor),
        action=action,
        target=target,
        detail=dict(detail or {}),
        ip=ip,
    )


def _encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(str(entry_id).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unprocessable("cursor is not valid") from exc
    if not value.isdigit() or len(value) > 18:
        raise Unprocessable("cursor is not valid")
    return int(value)


def _iso(value: datetime) -> str:
    return value.isoformat()


async def page(
    conn: Connection,
    *,
    tenant_id: str,
    limit: int,
    cursor: str | None,
    actor: str | None,
    action: str | None,
) -> dict[str, Any]:
    for name, value in (("actor", actor), ("action", action)):
        if value is not None and ("\x00" in value or len(value) > 320):
            raise Unprocessable(f"{name} is not a valid filter")
    rows = await audit_repo.page(
        conn,
        tenant_id=tenant_id,
        before=_decode_cursor(cursor) if cursor else None,
        actor=actor or None,
        action=action or None,
        limit=limit + 1,
    )
    items = [
        {
            "id": row["id"],
            "at": _iso(row["at"]),
            "actor": row["actor"],
            "action": row["action"],
            "target": row["target"],
            "detail": row["detail"],
            "ip": row["ip"],
        }
        for row in rows[:limit]
    ]
    return {
        "items": items,
        "next": _encode_cursor(rows[limit - 1]["id"]) if len(rows) > limit else None,
    }


async def purge_expired(pool: asyncpg.Pool, *, retention: timedelta) -> int:
    total = 0
    while True:
        async with pool.acquire() as conn:
            deleted = await audit_repo.delete_older_than(
                conn, age=retention, limit=_RETENTION_BATCH
            )
        total += deleted
        if deleted < _RETENTION_BATCH:
            return total


async def run_retention(pool: asyncpg.Pool, *, retention_days: int, interval: timedelta) -> None:
    """Delete entries older than ``retention_days`` now and then every ``interval``."""
    retention = timedelta(days=retention_days)
    while True:
        try:
            deleted = await purge_expired(pool, retention=retention)
            if deleted:
                log.info("audit retention: deleted %d entries older than %s", deleted, retention)
        except db.RETRYABLE_ERRORS as exc:
            log.warning("audit retention failed, will retry: %r", exc)
        await asyncio.sleep(interval.total_seconds() * random.uniform(0.9, 1.1))  # noqa: S311
