"""SQL of batched reports (``shared.services.report_batches``): two statements per batch,
one that locks the twins and one that writes them with their history."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import Connection


async def lock_live_twins(
    conn: Connection, *, tenant_ids: list[str], device_ids: list[str]
) -> list[asyncpg.Record]:
    """The live twins among these (tenant_id, device_id) pairs, locked in device id order (as
    single writes lock one and bulk desired jobs lock theirs), with the model's reported
    schema and the transaction clock (``now``) that stamps metadata and history."""
    return await conn.fetch(
        """SELECT s.device_id, s.tenant_id, s.reported_state, s.reported_metadata,
                  s.reported_version, s.reported_seq, s.desired_version, d.model_id,
                  m.reported_schema, now() AS now
           FROM unnest($1::text[], $2::text[]) AS a (tenant_id, device_id)
           JOIN device_state s ON s.device_id = a.device_id AND s.tenant_id = a.tenant_id
           JOIN devices d ON d.device_id = s.device_id AND d.tenant_id = a.tenant_id
                         AND d.revoked_at IS NULL
           LEFT JOIN device_models m ON m.tenant_id = d.tenant_id AND m.model_id = d.model_id
           ORDER BY s.device_id
           FOR UPDATE OF s""",
        tenant_ids,
        device_ids,
    )


async def lock_token_holders(conn: Connection, token_hashes: list[bytes]) -> list[asyncpg.Record]:
    """:func:`lock_live_twins` for reports addressed by provision token (the HTTP device
    API): the twins of the live devices holding these tokens, each row with its
    ``token_hash``. Unknown or revoked tokens have no row."""
    return await conn.fetch(
        """SELECT d.token_hash, s.device_id, s.tenant_id, s.reported_state,
                  s.reported_metadata, s.reported_version, s.reported_seq, s.desired_version,
                  d.model_id, m.reported_schema, now() AS now
           FROM devices d
           JOIN device_state s ON s.device_id = d.device_id AND s.tenant_id = d.tenant_id
           LEFT JOIN device_models m ON m.tenant_id = d.tenant_id AND m.model_id = d.model_id
           WHERE d.token_hash = ANY($1::bytea[]) AND d.revoked_at IS NULL
           ORDER BY s.device_id
           FOR UPDATE OF s""",
        token_hashes,
    )


async def write_reported_batch(
    conn: Connection,
    *,
    device_ids: list[str],
    written: list[bool],
    reported: list[dict[str, Any] | None],
    metadata: list[dict[str, Any] | None],
    versions: list[int | None],
    seqs: list[int | None],
    history: list[tuple[str, str, int, dict[str, Any], str]],
    actor_type: str,
    actor_email: str | None,
    at: datetime,
    rejected: list[dict[str, Any] | None] | None = None,
) -> None:
    """One statement for a whole batch: each device's final reported state, every device
    marked seen, and one twin_history row per accepted report (``history``: tenant id,
    device id, version, patch), inserted (so numbered) in delivery order.

    A device whose reports were all rejected (``written`` false) is only marked seen, so
    its twin and ``shadow_updated_at`` stay as they were. ``rejected``: a device's new
    refusal (SPEC §11, ``{version, code, message, at}``), None to keep the one it has.
    """
    refusals = rejected if rejected is not None else [None] * len(device_ids)
    await conn.execute(
        """WITH twins AS (
               UPDATE device_state s
               SET reported_state =
                       CASE WHEN w.written THEN w.reported ELSE s.reported_state END,
                   reported_metadata =
                       CASE WHEN w.written THEN w.metadata ELSE s.reported_metadata END,
                   reported_version =
                       CASE WHEN w.written THEN w.version ELSE s.reported_version END,
                   reported_seq = CASE WHEN w.written THEN w.seq ELSE s.reported_seq END,
                   rejected = COALESCE(w.rejected, s.rejected),
                   rejected_version =
                       COALESCE((w.rejected ->> 'version')::bigint, s.rejected_version),
                   shadow_updated_at =
                       CASE WHEN w.written THEN now() ELSE s.shadow_updated_at END,
                   document_version = s.document_version + w.updates,
                   last_seen = now()
               FROM unnest($1::text[], $2::boolean[], $3::jsonb[], $4::jsonb[], $5::bigint[],
                           $13::bigint[], $14::bigint[], $15::jsonb[])
                    AS w (device_id, written, reported, metadata, version, seq, updates,
                          rejected)
               WHERE s.device_id = w.device_id)
           INSERT INTO twin_history
               (tenant_id, device_id, kind, actor_type, actor_email, version, patch, at)
           SELECT h.tenant_id, h.device_id, h.kind, $10, $11, h.version, h.patch, $12
           FROM unnest($6::text[], $7::text[], $8::bigint[], $9::jsonb[], $16::text[])
                WITH ORDINALITY AS h (tenant_id, device_id, version, patch, kind, n)
           ORDER BY h.n""",
        device_ids,
        written,
        reported,
        metadata,
        versions,
        [entry[0] for entry in history],
        [entry[1] for entry in history],
        [entry[2] for entry in history],
        [entry[3] for entry in history],
        actor_type,
        actor_email,
        at,
        seqs,
        _updates(device_ids, history),
        refusals,
        [entry[4] for entry in history],
    )


def _updates(
    device_ids: list[str], history: list[tuple[str, str, int, dict[str, Any], str]]
) -> list[int]:
    """Accepted reports per device: each is an update of its shadow document (SPEC §9).
    A refusal of a desired version (SPEC §11) changes no state, so it is not one."""
    counts = Counter(device_id for _, device_id, _, _, kind in history if kind == "reported")
    return [counts[device_id] for device_id in device_ids]
