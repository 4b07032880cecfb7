"""The twin's history: who changed what, when (SPEC §8), and its retention."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg

from shared import db, twin
from shared.db import Connection
from shared.errors import Unprocessable
from shared.repositories import history as history_repo

log = logging.getLogger(__name__)

_CURSOR = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a twin write: an operator (by e-mail), the device itself, or a staged
    rollout (by its id, SPEC §11)."""

    type: Literal["user", "device", "rollout"]
    email: str | None = None
    id: str | None = None

    @classmethod
    def user(cls, email: str) -> Actor:
        return cls("user", email)

    @classmethod
    def device(cls) -> Actor:
        return cls("device")

    @classmethod
    def rollout(cls, rollout_id: str) -> Actor:
        return cls("rollout", id=rollout_id)

    def as_json(self) -> dict[str, str]:
        if self.type == "rollout":
            return {"type": "rollout", "rollout_id": self.id or ""}
        return (
            {"type": "user", "email": self.email or ""}
            if self.type == "user"
            else {"type": "device"}
        )


async def record(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    actor: Actor,
    entry: twin.HistoryEntry,
    shadow: str = "",
) -> None:
    """Record an accepted write of a shadow ("" the classic one); call it in the
    transaction of the write itself."""
    await history_repo.insert(
        conn,
        tenant_id=tenant_id,
        device_id=device_id,
        kind=entry.kind,
        actor_type=actor.type,
        actor_email=actor.email,
        version=entry.version,
        patch=entry.patch,
        at=entry.at,
        shadow=shadow,
    )


def _item(row: asyncpg.Record) -> dict[str, Any]:
    actor = Actor(row["actor_type"], row["actor_email"], row["actor_id"])
    item = {
        "id": row["id"],
        "at": row["at"].isoformat(),
        "kind": row["kind"],
        "actor": actor.as_json(),
        "version": row["version"],
        "patch": row["patch"],
    }
    if row["shadow"]:
        item["shadow"] = row["shadow"]
    return item


_MAX_ID = 2**63 - 1  # history ids are bigint


def _decode_cursor(cursor: str) -> int:
    """A history id from a ``next`` value: ASCII digits within bigint, else 422."""
    if not _CURSOR.fullmatch(cursor) or int(cursor) > _MAX_ID:
        raise Unprocessable("cursor is not valid: pass the 'next' of the previous page")
    return int(cursor)


async def page(
    conn: Connection,
    *,
    tenant_id: str,
    device_id: str,
    cursor: str | None,
    limit: int,
    shadow: str = "",
) -> dict[str, Any]:
    """``{"items", "next"}``: the device's history newest first; ``next`` pages further back."""
    rows = await history_repo.page(
        conn,
        tenant_id=tenant_id,
        device_id=device_id,
        before=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
        shadow=shadow,
    )
    items = rows[:limit]
    return {
        "items": [_item(row) for row in items],
        "next": str(items[-1]["id"]) if len(rows) > limit else None,
    }


# --- retention -----------------------------------------------------------------------------


async def purge_expired(
    pool: asyncpg.Pool,
    *,
    retention: timedelta,
    batch_size: int = 1000,
    now: datetime | None = None,
) -> int:
    """Delete history older than ``retention``; returns how many rows went.

    The job owns its transactions: one short transaction per batch, so no lock is held for
    long and writers never wait on it (see ``history_repo.delete_older_than``).
    """
    cutoff = (now or datetime.now(UTC)) - retention
    deleted = 0
    while True:
        async with db.transaction(pool) as conn:
            batch = await history_repo.delete_older_than(conn, cutoff=cutoff, limit=batch_size)
        deleted += batch
        if batch < batch_size:
            return deleted
        await asyncio.sleep(0)  # let request handlers in between batches


async def run_retention(pool: asyncpg.Pool, *, retention_days: int, interval: timedelta) -> None:
    """Purge expired history now and then every ``interval`` (with jitter), forever."""
    retention = timedelta(days=retention_days)
    while True:
        try:
            deleted = await purge_expired(pool, retention=retention)
            if deleted:
                log.info("history retention: deleted %d rows older than %s", deleted, retention)
        except db.RETRYABLE_ERRORS as exc:
            log.warning("history retention failed, will retry: %r", exc)
        await asyncio.sleep(interval.total_seconds() * random.uniform(0.9, 1.1))  # noqa: S311
