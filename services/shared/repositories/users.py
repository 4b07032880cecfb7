from __future__ import annotations

import asyncpg

from shared.db import Connection


async def insert(
    conn: Connection, *, tenant_id: str, email: str, password_hash: str, role: str
) -> int | None:
    """The new user's id, or None when the e-mail is taken."""
    user_id: int | None = await conn.fetchval(
        """INSERT INTO users (tenant_id, email, password_hash, role)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT ((lower(email))) DO NOTHING
           RETURNING user_id""",
        tenant_id,
        email,
        password_hash,
        role,
    )
    return user_id


async def by_email(conn: Connection, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT user_id, tenant_id, email, password_hash, role
           FROM users WHERE lower(email) = lower($1)""",
        email,
    )
