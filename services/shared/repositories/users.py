from __future__ import annotations

import asyncpg

from shared.db import Connection

_USER_COLUMNS = "user_id, tenant_id, email, role, disabled, created_at, last_login_at"


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
        """SELECT user_id, tenant_id, email, password_hash, role, disabled, token_version
           FROM users WHERE lower(email) = lower($1)""",
        email,
    )


async def by_id(conn: Connection, user_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT user_id, tenant_id, email, password_hash, role, disabled, token_version
           FROM users WHERE user_id = $1""",
        user_id,
    )


async def token_state(conn: Connection | asyncpg.Pool, user_id: int) -> asyncpg.Record | None:
    """What decides whether a token of the user is still good."""
    return await conn.fetchrow(
        "SELECT tenant_id, role, disabled, token_version FROM users WHERE user_id = $1",
        user_id,
    )


async def list_for_tenant(conn: Connection, tenant_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_USER_COLUMNS} FROM users WHERE tenant_id = $1 ORDER BY user_id",  # noqa: S608
        tenant_id,
    )


async def get_in_tenant(conn: Connection, *, tenant_id: str, user_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users WHERE tenant_id = $1 AND user_id = $2",  # noqa: S608
        tenant_id,
        user_id,
    )


async def lock_tenant_admins(conn: Connection, tenant_id: str) -> list[int]:
    """The tenant's enabled admins, their rows locked: two admins demoting each other at
    once are then serialised, and one of them finds itself the last."""
    rows = await conn.fetch(
        """SELECT user_id FROM users
           WHERE tenant_id = $1 AND role = 'admin' AND NOT disabled
           ORDER BY user_id FOR UPDATE""",
        tenant_id,
    )
    return [row["user_id"] for row in rows]


async def update(
    conn: Connection, *, tenant_id: str, user_id: int, role: str | None, disabled: bool | None
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        # Disabling also moves token_version: enabling the user again later must not bring
        # back the tokens issued before.
        f"""UPDATE users SET role = coalesce($3, role), disabled = coalesce($4, disabled),
                   token_version = token_version
                       + CASE WHEN $4 AND NOT disabled THEN 1 ELSE 0 END
            WHERE tenant_id = $1 AND user_id = $2
            RETURNING {_USER_COLUMNS}""",  # noqa: S608
        tenant_id,
        user_id,
        role,
        disabled,
    )


async def delete(conn: Connection, *, tenant_id: str, user_id: int) -> bool:
    deleted = await conn.fetchval(
        "DELETE FROM users WHERE tenant_id = $1 AND user_id = $2 RETURNING true",
        tenant_id,
        user_id,
    )
    return bool(deleted)


async def set_password(conn: Connection, *, user_id: int, password_hash: str) -> int:
    """Store the new hash and revoke every earlier token; the new token_version."""
    version: int = await conn.fetchval(
        """UPDATE users SET password_hash = $2, token_version = token_version + 1
           WHERE user_id = $1 RETURNING token_version""",
        user_id,
        password_hash,
    )
    return version


async def signed_in(conn: Connection, user_id: int) -> None:
    await conn.execute("UPDATE users SET last_login_at = now() WHERE user_id = $1", user_id)


async def list_all(conn: Connection, tenant_id: str | None) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_USER_COLUMNS} FROM users
            WHERE $1::text IS NULL OR tenant_id = $1
            ORDER BY tenant_id, user_id""",  # noqa: S608
        tenant_id,
    )
