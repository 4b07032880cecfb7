"""Device certificates and the tenants' device CAs (migration 016)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from shared.db import Connection

_COLUMNS = "certificate_id, device_id, origin, subject, not_after, created_at"


async def live_device_exists(conn: Connection, *, tenant_id: str, device_id: str) -> bool:
    found = await conn.fetchval(
        """SELECT 1 FROM devices
           WHERE tenant_id = $1 AND device_id = $2 AND revoked_at IS NULL""",
        tenant_id,
        device_id,
    )
    return found is not None


async def device_ca(conn: Connection, *, tenant_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT certificate_pem, key_pem FROM device_cas WHERE tenant_id = $1", tenant_id
    )


async def insert_device_ca(
    conn: Connection, *, tenant_id: str, certificate_pem: str, key_pem: str
) -> None:
    """Stores the tenant's CA unless a concurrent request stored one first."""
    await conn.execute(
        """INSERT INTO device_cas (tenant_id, certificate_pem, key_pem) VALUES ($1, $2, $3)
           ON CONFLICT (tenant_id) DO NOTHING""",
        tenant_id,
        certificate_pem,
        key_pem,
    )


async def device_ca_certificates(conn: Connection) -> list[str]:
    """Every tenant's device CA certificate (PEM): what the broker's trust store holds."""
    rows = await conn.fetch("SELECT certificate_pem FROM device_cas ORDER BY tenant_id")
    return [row["certificate_pem"] for row in rows]


async def self_signed_registered(conn: Connection) -> list[str]:
    rows = await conn.fetch(
        """SELECT certificate_pem FROM device_certificates
           WHERE origin = 'registered' AND self_signed ORDER BY certificate_id"""
    )
    return [row["certificate_pem"] for row in rows]


async def insert(
    conn: Connection,
    *,
    certificate_id: str,
    tenant_id: str,
    device_id: str,
    certificate_pem: str,
    origin: str,
    subject: str,
    self_signed: bool,
    not_after: datetime,
) -> asyncpg.Record | None:
    """The new certificate's row, or None when its fingerprint is registered already."""
    return await conn.fetchrow(
        f"""INSERT INTO device_certificates
                (certificate_id, tenant_id, device_id, certificate_pem, origin, subject,
                 self_signed, not_after)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (certificate_id) DO NOTHING
            RETURNING {_COLUMNS}""",  # noqa: S608 - fixed column list
        certificate_id,
        tenant_id,
        device_id,
        certificate_pem,
        origin,
        subject,
        self_signed,
        not_after,
    )


async def list_for_device(
    conn: Connection, *, tenant_id: str, device_id: str
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_COLUMNS} FROM device_certificates
            WHERE tenant_id = $1 AND device_id = $2 ORDER BY created_at, certificate_id""",  # noqa: S608
        tenant_id,
        device_id,
    )


async def delete(conn: Connection, *, tenant_id: str, device_id: str, certificate_id: str) -> bool:
    """True when the certificate was the device's; its broker session is cut at commit."""
    status: str = await conn.execute(
        """DELETE FROM device_certificates
           WHERE tenant_id = $1 AND device_id = $2 AND certificate_id = $3""",
        tenant_id,
        device_id,
        certificate_id,
    )
    return status == "DELETE 1"
