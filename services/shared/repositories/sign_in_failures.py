from __future__ import annotations

from datetime import datetime

from shared.db import Connection


async def locked_until(conn: Connection, keys: list[str]) -> datetime | None:
    """The latest lock-out among ``keys`` that has not yet ended."""
    value: datetime | None = await conn.fetchval(
        """SELECT max(locked_until) FROM sign_in_failures
           WHERE key = ANY($1::text[]) AND locked_until > now()""",
        keys,
    )
    return value


async def count_failure(
    conn: Connection, *, key: str, limit: int, window_s: int, lockout_s: int
) -> datetime | None:
    """Count one failure under ``key``; the lock-out it starts, if this one reached ``limit``.

    Failures older than ``window_s`` are forgotten. Each failure beyond the limit doubles the
    lock-out (capped at 64 times ``lockout_s``), so guessing stays slow however long it goes on.
    """
    until: datetime | None = await conn.fetchval(
        """INSERT INTO sign_in_failures AS f (key, failures, first_at)
           VALUES ($1, 1, now())
           ON CONFLICT (key) DO UPDATE SET
               failures = CASE WHEN f.first_at < now() - make_interval(secs => $3)
                               THEN 1 ELSE f.failures + 1 END,
               first_at = CASE WHEN f.first_at < now() - make_interval(secs => $3)
                               THEN now() ELSE f.first_at END
           RETURNING CASE WHEN failures >= $2 THEN now() + make_interval(
                   secs => $4 * power(2, least(failures - $2, 6))) END""",
        key,
        limit,
        window_s,
        lockout_s,
    )
    if until is not None:
        await conn.execute(
            "UPDATE sign_in_failures SET locked_until = $2 WHERE key = $1", key, until
        )
    return until


async def clear(conn: Connection, key: str) -> None:
    await conn.execute("DELETE FROM sign_in_failures WHERE key = $1", key)
