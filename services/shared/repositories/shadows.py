"""SQL of shadows by name (SPEC §9): the classic shadow is the ``device_state`` row
(``shadow == ""``), a named one a row of ``device_shadows``."""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.db import Connection

_NAMED_COLUMNS = """n.device_id, n.tenant_id, n.name, n.desired_state, n.reported_state,
       n.desired_metadata, n.reported_metadata, n.desired_version, n.reported_version,
       n.document_version, n.reported_seq, n.shadow_updated_at, n.created_at,
       s.last_seen, s.connected, s.connected_at, s.disconnected_at,
       n.rejected, n.rejected_version"""

_CLASSIC_COLUMNS = """s.device_id, s.tenant_id, '' AS name, s.desired_state, s.reported_state,
       s.desired_metadata, s.reported_metadata, s.desired_version, s.reported_version,
       s.document_version, s.reported_seq, s.shadow_updated_at, NULL::timestamptz AS created_at,
       s.last_seen, s.connected, s.connected_at, s.disconnected_at,
       s.rejected, s.rejected_version"""


async def get(
    conn: Connection, *, tenant_id: str, device_id: str, shadow: str
) -> asyncpg.Record | None:
    """A live device's shadow, with the device's model id; None when it has no such shadow."""
    if shadow == "":
        return await conn.fetchrow(
            f"""SELECT {_CLASSIC_COLUMNS}, d.model_id
                FROM device_state s JOIN devices d USING (device_id)
                WHERE s.device_id = $1 AND s.tenant_id = $2 AND d.revoked_at IS NULL""",  # noqa: S608
            device_id,
            tenant_id,
        )
    return await conn.fetchrow(
        f"""SELECT {_NAMED_COLUMNS}, NULL::text AS model_id
            FROM device_shadows n
            JOIN device_state s ON s.device_id = n.device_id
            JOIN devices d ON d.device_id = n.device_id AND d.revoked_at IS NULL
            WHERE n.device_id = $1 AND n.tenant_id = $2 AND n.name = $3""",  # noqa: S608
        device_id,
        tenant_id,
        shadow,
    )


async def lock(
    conn: Connection, *, tenant_id: str, device_id: str, shadow: str
) -> asyncpg.Record | None:
    """:func:`get` with the shadow's row locked until the transaction ends and the
    transaction's clock (``now``)."""
    if shadow == "":
        return await conn.fetchrow(
            f"""SELECT {_CLASSIC_COLUMNS}, d.model_id, now() AS now
                FROM device_state s JOIN devices d USING (device_id)
                WHERE s.device_id = $1 AND s.tenant_id = $2 AND d.revoked_at IS NULL
                FOR UPDATE OF s""",  # noqa: S608
            device_id,
            tenant_id,
        )
    return await conn.fetchrow(
        f"""SELECT {_NAMED_COLUMNS}, NULL::text AS model_id, now() AS now
            FROM device_shadows n
            JOIN device_state s ON s.device_id = n.device_id
            JOIN devices d ON d.device_id = n.device_id AND d.revoked_at IS NULL
            WHERE n.device_id = $1 AND n.tenant_id = $2 AND n.name = $3
            FOR UPDATE OF n""",  # noqa: S608
        device_id,
        tenant_id,
        shadow,
    )


async def create(
    conn: Connection, *, tenant_id: str, device_id: str, shadow: str, max_shadows: int
) -> str:
    """Create a named shadow (its first update): ``created``, ``exists`` (another
    transaction created it first), ``full`` (the device has ``max_shadows`` already) or
    ``missing`` (no such live device in this tenant).

    The device's classic row is locked first, so creations of one device are serialised
    and the count cannot be overrun; every writer locks the classic row before a named one.
    """
    live = await conn.fetchval(
        """SELECT s.device_id FROM device_state s JOIN devices d USING (device_id)
           WHERE s.device_id = $1 AND s.tenant_id = $2 AND d.revoked_at IS NULL
           FOR UPDATE OF s""",
        device_id,
        tenant_id,
    )
    if live is None:
        return "missing"
    count: int = await conn.fetchval(
        "SELECT count(*) FROM device_shadows WHERE device_id = $1 AND name <> $2",
        device_id,
        shadow,
    )
    exists = await conn.fetchval(
        "SELECT true FROM device_shadows WHERE device_id = $1 AND name = $2", device_id, shadow
    )
    if exists:
        return "exists"
    if count >= max_shadows:
        return "full"
    await conn.execute(
        "INSERT INTO device_shadows (device_id, tenant_id, name) VALUES ($1, $2, $3)",
        device_id,
        tenant_id,
        shadow,
    )
    return "created"


async def write(
    conn: Connection,
    *,
    device_id: str,
    shadow: str,
    desired: tuple[dict[str, Any], dict[str, Any], int] | None = None,
    reported: tuple[dict[str, Any], dict[str, Any], int] | None = None,
    document_version: int,
    rejected: dict[str, Any] | None = None,
    reported_seq: int | None = None,
) -> None:
    """Store one accepted update of a shadow: each side given as (state, metadata,
    version), None for a side left as it is, and the document's new version.
    ``rejected``: a new refusal ``{version, code, message, at}`` (SPEC §11), None to keep
    the one it has; ``reported_seq``: the applied report's ``seq``, None to keep it."""
    d_state, d_meta, d_version = desired if desired is not None else (None, None, None)
    r_state, r_meta, r_version = reported if reported is not None else (None, None, None)
    where = "device_id = $1" if shadow == "" else "device_id = $1 AND name = $11"
    table = "device_state" if shadow == "" else "device_shadows"
    args: list[Any] = [device_id, d_state, d_meta, d_version, r_state, r_meta, r_version]
    args += [document_version, rejected, reported_seq]
    if shadow != "":
        args.append(shadow)
    await conn.execute(
        f"""UPDATE {table}
            SET desired_state = COALESCE($2::jsonb, desired_state),
                desired_metadata = COALESCE($3::jsonb, desired_metadata),
                desired_version = COALESCE($4::bigint, desired_version),
                reported_state = COALESCE($5::jsonb, reported_state),
                reported_metadata = COALESCE($6::jsonb, reported_metadata),
                reported_version = COALESCE($7::bigint, reported_version),
                document_version = $8,
                rejected = COALESCE($9::jsonb, rejected),
                rejected_version = COALESCE(($9::jsonb ->> 'version')::bigint, rejected_version),
                reported_seq = COALESCE($10::bigint, reported_seq),
                shadow_updated_at = now()
            WHERE {where}""",  # noqa: S608 - fixed table and conditions
        *args,
    )


async def touch(conn: Connection, *, device_id: str) -> None:
    """A device's contact (an AWS shadow request): ``last_seen`` (SPEC §4)."""
    await conn.execute("UPDATE device_state SET last_seen = now() WHERE device_id = $1", device_id)


async def delete(conn: Connection, *, tenant_id: str, device_id: str, shadow: str) -> bool:
    status: str = await conn.execute(
        "DELETE FROM device_shadows WHERE device_id = $1 AND tenant_id = $2 AND name = $3",
        device_id,
        tenant_id,
        shadow,
    )
    return status != "DELETE 0"


async def names(conn: Connection, *, tenant_id: str, device_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT name, desired_version, reported_version, document_version,
                  shadow_updated_at, created_at
           FROM device_shadows WHERE device_id = $1 AND tenant_id = $2 ORDER BY name""",
        device_id,
        tenant_id,
    )


# --- delivery of named desired state (ingest_iot.publisher) --------------------------------


async def unpublished(conn: Connection, *, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT device_id, tenant_id, name, desired_state, desired_version
           FROM device_shadows
           WHERE desired_version > published_version
           ORDER BY device_id, name
           LIMIT $1""",
        limit,
    )


async def mark_published(
    conn: Connection, device_ids: list[str], names_: list[str], versions: list[int]
) -> int:
    """Record what went out; returns the publish number given to this batch (from the
    classic messages' sequence, so the broker's marker covers both)."""
    seq: int = await conn.fetchval(
        """WITH s AS (SELECT nextval('desired_publish_seq') AS seq),
                done AS (
                    UPDATE device_shadows n
                    SET published_version = GREATEST(n.published_version, p.version),
                        published_seq = (SELECT seq FROM s)
                    FROM unnest($1::text[], $2::text[], $3::bigint[])
                         AS p (device_id, name, version)
                    WHERE n.device_id = p.device_id AND n.name = p.name)
           SELECT seq FROM s""",
        device_ids,
        names_,
        versions,
    )
    return seq


async def republish_all(conn: Connection, *, after_seq: int = -1) -> int:
    """Named shadows' desired state to send again (the publisher's next flushes, a batch at
    a time): all of them for a fresh broker, those published after publish number
    ``after_seq`` for one restored from a store saved then. How many are queued."""
    status: str = await conn.execute(
        """UPDATE device_shadows SET published_version = 0
           WHERE published_version > 0 AND published_seq > $1""",
        after_seq,
    )
    await conn.execute("SELECT pg_notify('iot_desired', '')")
    return int(status.split()[-1])
