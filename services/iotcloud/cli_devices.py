"""``iotcloud device list|show|delete|rotate-token``: the registry from the command line.

Each works inside one tenant, as the operator API does: a device of another tenant is
"not found", whether or not its id exists there.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from iotcloud.cli_failures import DEVICE_ID_WORDS, TENANT_ID_WORDS


class DeviceCommandError(Exception):
    """A refusal of a device command: one line for the user."""


def check_tenant_id(value: str) -> None:
    from shared.ids import is_tenant_id

    if not is_tenant_id(value):
        raise DeviceCommandError(f"{value!r} is not a tenant id: {TENANT_ID_WORDS}")


def check_device_id(value: str) -> None:
    from shared.ids import is_device_id

    if not is_device_id(value):
        raise DeviceCommandError(f"{value!r} is not a device id: {DEVICE_ID_WORDS}")


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")


async def _known_tenant(conn: Any, tenant_id: str) -> None:
    from shared.repositories import tenants

    check_tenant_id(tenant_id)
    if not await tenants.exists(conn, tenant_id):
        raise DeviceCommandError(f"no tenant {tenant_id!r}")


def _table(items: list[dict[str, Any]]) -> str:
    columns = ("device_id", "name", "sync_status", "desired_version", "reported_version")
    headers = ("DEVICE", "NAME", "STATUS", "DESIRED", "REPORTED", "LAST SEEN")
    rows = [
        [str(item[column]) for column in columns] + [item["last_seen"] or "never"] for item in items
    ]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


async def device_list(args: argparse.Namespace, conn: Any) -> None:
    from shared import settings
    from shared.services import devices

    await _known_tenant(conn, args.tenant)
    device_filter = devices.device_filter(
        sync_status=args.status,
        tags=devices.parse_tag_filters(args.tag or []),
        text=args.q,
    )
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await devices.list_devices(
            conn,
            tenant_id=args.tenant,
            device_filter=device_filter,
            cursor=cursor,
            limit=min(500, args.limit - len(items)) if args.limit else 500,
            stale_after=settings.stale_after(),
        )
        items += page["items"]
        cursor = page["next"]
        if cursor is None or (args.limit and len(items) >= args.limit):
            break
    if args.json:
        _print_json({"items": items})
    elif items:
        print(_table(items))
    else:
        print(f"no devices in tenant {args.tenant}", file=sys.stderr)


async def device_show(args: argparse.Namespace, conn: Any) -> None:
    from shared import settings
    from shared.repositories import twin_state
    from shared.services.twins import twin_document

    await _known_tenant(conn, args.tenant)
    check_device_id(args.id)
    rows = await twin_state.get_documents(conn, tenant_ids=[args.tenant], device_ids=[args.id])
    if not rows:
        raise DeviceCommandError(f"no device {args.id!r} in tenant {args.tenant!r}")
    row = rows[0]
    document = twin_document(
        row,
        stale_after=settings.stale_after(),
        model_id=row["model_id"],
        reported_schema=row["reported_schema"],
    )
    if args.json:
        _print_json(document)
        return
    for key in ("device_id", "tenant_id", "model_id", "sync_status", "connected", "last_seen"):
        print(f"{key + ':':<18}{document[key] if document[key] is not None else '-'}")
    print(
        f"{'versions:':<18}desired {document['desired_version']}, "
        f"reported {document['reported_version']}"
    )
    for key in ("desired", "reported", "delta"):
        print(f"{key + ':':<18}{orjson.dumps(document[key]).decode()}")


async def device_delete(args: argparse.Namespace, conn: Any) -> None:
    from shared.errors import NotFound
    from shared.services import devices

    await _known_tenant(conn, args.tenant)
    check_device_id(args.id)
    try:
        async with conn.transaction():
            await devices.delete_device(conn, tenant_id=args.tenant, device_id=args.id)
    except NotFound:
        raise DeviceCommandError(f"no device {args.id!r} in tenant {args.tenant!r}") from None
    if args.json:
        _print_json({"device_id": args.id, "tenant_id": args.tenant, "deleted": True})
    else:
        print(f"deleted {args.id}; its token no longer works and its MQTT session is cut")


async def device_rotate_token(args: argparse.Namespace, conn: Any) -> None:
    from shared.errors import NotFound
    from shared.services import devices

    await _known_tenant(conn, args.tenant)
    check_device_id(args.id)
    try:
        async with conn.transaction():
            token = await devices.rotate_token(conn, tenant_id=args.tenant, device_id=args.id)
    except NotFound:
        raise DeviceCommandError(f"no device {args.id!r} in tenant {args.tenant!r}") from None
    _print_json({"device_id": args.id, "tenant_id": args.tenant, "provision_token": token})
