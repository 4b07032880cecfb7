"""The device registry: ids, provision tokens (shown once, stored as hashes), paging."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared import twin
from shared.db import Connection
from shared.errors import Conflict, NotFound, Unprocessable
from shared.ids import DEVICE_ID_RE
from shared.repositories import devices as devices_repo
from shared.security import hash_provision_token, new_provision_token

SYNC_STATUSES = ("synced", "pending", "stale", "rejected")


@dataclass(frozen=True, slots=True)
class NewDevice:
    device_id: str
    tenant_id: str
    provision_token: str

    def as_json(self) -> dict[str, str]:
        return {
            "device_id": self.device_id,
            "tenant_id": self.tenant_id,
            "provision_token": self.provision_token,
        }


def new_device_id() -> str:
    return "dev-" + secrets.token_hex(8)


async def create_device(
    conn: Connection, *, tenant_id: str, device_id: str | None, name: str | None
) -> NewDevice:
    device_id = device_id or new_device_id()
    if not DEVICE_ID_RE.match(device_id):
        raise Unprocessable(
            "device_id must match [A-Za-z0-9][A-Za-z0-9._:-]{0,127} (no '/', '+' or '#')"
        )
    token = new_provision_token()
    created = await devices_repo.insert(
        conn,
        device_id=device_id,
        tenant_id=tenant_id,
        name=name or device_id,
        token_hash=hash_provision_token(token),
    )
    if not created:
        # The same words whoever holds the id: ids are unique across tenants (each is an MQTT
        # login and an AWS thing name), and the refusal says nothing about the holder.
        raise Conflict(
            f"device id {device_id!r} is already in use; device ids are unique across all "
            "tenants (an id is the device's MQTT login): choose another"
        )
    return NewDevice(device_id, tenant_id, token)


async def rotate_token(conn: Connection, *, tenant_id: str, device_id: str) -> str:
    token = new_provision_token()
    if not await devices_repo.set_token(
        conn,
        tenant_id=tenant_id,
        device_id=device_id,
        token_hash=hash_provision_token(token),
    ):
        raise NotFound(f"device {device_id!r} not found")
    return token


async def delete_device(conn: Connection, *, tenant_id: str, device_id: str) -> None:
    if not await devices_repo.revoke(conn, tenant_id=tenant_id, device_id=device_id):
        raise NotFound(f"device {device_id!r} not found")


def encode_cursor(device_id: str) -> str:
    return base64.urlsafe_b64encode(device_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unprocessable("cursor is not valid") from exc
    if not DEVICE_ID_RE.match(value):
        raise Unprocessable("cursor is not valid")
    return value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def device_summary(row: asyncpg.Record, *, stale_after: timedelta) -> dict[str, Any]:
    last_seen = row["last_seen"]
    return {
        "device_id": row["device_id"],
        "name": row["name"],
        "tags": row["tags"],
        "sync_status": twin.sync_status(
            row["desired_version"],
            row["reported_version"],
            last_seen,
            stale_after=stale_after,
            rejected_version=row["rejected_version"],
        ),
        "desired_version": row["desired_version"],
        "reported_version": row["reported_version"],
        "last_seen": last_seen.isoformat() if last_seen else None,
        "connected": row["connected"],
        "connected_at": _iso(row["connected_at"]),
        "disconnected_at": _iso(row["disconnected_at"]),
        "created_at": row["created_at"].isoformat(),
    }


MAX_TAG_FILTERS = 10
MAX_TEXT_QUERY = 200


def parse_tag_filters(values: list[str]) -> dict[str, str]:
    """``["key:value", ...]`` as a tags object every match must contain."""
    if len(values) > MAX_TAG_FILTERS:
        raise Unprocessable(f"at most {MAX_TAG_FILTERS} tag filters")
    tags: dict[str, str] = {}
    for value in values:
        key, sep, wanted = value.partition(":")
        if not sep or not key:
            raise Unprocessable(f"tag filter must look like key:value, got {value!r}")
        if key in tags and tags[key] != wanted:
            raise Unprocessable(f"tag {key!r} is asked for with two values")
        tags[key] = wanted
    return tags


def device_filter(
    *,
    sync_status: str | None = None,
    tags: dict[str, str] | None = None,
    model_id: str | None = None,
    text: str | None = None,
    device_ids: list[str] | None = None,
    connected: bool | None = None,
) -> devices_repo.DeviceFilter:
    """A validated filter; bad values are 422, never a database error."""
    if sync_status is not None and sync_status not in SYNC_STATUSES:
        raise Unprocessable(f"sync_status must be one of {', '.join(SYNC_STATUSES)}")
    if text is not None and len(text) > MAX_TEXT_QUERY:
        raise Unprocessable(f"q is longer than {MAX_TEXT_QUERY} characters")
    if "\x00" in (text or "") or any("\x00" in k + v for k, v in (tags or {}).items()):
        raise Unprocessable("filters cannot contain NUL characters")
    if model_id is not None and not DEVICE_ID_RE.match(model_id):
        raise Unprocessable(f"{model_id!r} is not a model id")
    if device_ids is not None:
        bad = next((d for d in device_ids if not DEVICE_ID_RE.match(d)), None)
        if bad is not None:
            raise Unprocessable(f"{bad!r} is not a device id")
    return devices_repo.DeviceFilter(
        sync_status=sync_status,
        tags=tags or {},
        model_id=model_id,
        text=text or None,
        device_ids=tuple(device_ids) if device_ids is not None else None,
        connected=connected,
    )


async def list_devices(
    conn: Connection,
    *,
    tenant_id: str,
    device_filter: devices_repo.DeviceFilter,
    cursor: str | None,
    limit: int,
    stale_after: timedelta,
) -> dict[str, Any]:
    """A page of the filtered list, read from the database as it is now (never stale)."""
    rows = await devices_repo.list_page(
        conn,
        tenant_id=tenant_id,
        device_filter=device_filter,
        after=decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
        stale_after=stale_after,
    )
    page = rows[:limit]
    return {
        "items": [device_summary(row, stale_after=stale_after) for row in page],
        "next": encode_cursor(page[-1]["device_id"]) if len(rows) > limit else None,
    }
