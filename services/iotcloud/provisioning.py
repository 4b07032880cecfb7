"""Registering devices from the command line, one or many in one transaction."""

from __future__ import annotations

import logging

from shared import db
from shared.ids import DEVICE_ID_RE
from shared.repositories import bulk_devices, tenants
from shared.security import hash_provision_token, new_provision_token
from shared.services import audit
from shared.services.devices import NewDevice, create_device

log = logging.getLogger(__name__)


class ProvisioningError(RuntimeError):
    pass


async def create_devices(
    database_url: str, *, tenant_id: str, specs: list[tuple[str | None, str | None]]
) -> list[NewDevice]:
    """Create devices from (device_id, name) pairs in one transaction. The broker needs
    nothing: it asks the database at each device's CONNECT."""
    conn = await db.connect(database_url, application_name="iotcloud-cli")
    try:
        async with conn.transaction():
            if not await tenants.exists(conn, tenant_id):
                raise ProvisioningError(f"no tenant {tenant_id!r}")
            created = [
                await create_device(conn, tenant_id=tenant_id, device_id=device_id, name=name)
                for device_id, name in specs
            ]
            for device in created:
                await audit.record(
                    conn, "iotcloud-cli", "device.create", device.device_id, tenant_id=tenant_id
                )
            return created
    finally:
        await conn.close()


async def provision_fleet(
    database_url: str, *, tenant_id: str, device_ids: list[str]
) -> dict[str, str]:
    """Create these devices, or give existing ones a new token: {device_id: token}.

    For simulators, demos and benchmarks, which must know every token they log in with: the
    whole fleet in a couple of statements and one transaction.
    """
    for device_id in device_ids:
        if not DEVICE_ID_RE.match(device_id):
            raise ProvisioningError(f"not a valid device id: {device_id!r}")
    tokens = {device_id: new_provision_token() for device_id in device_ids}
    conn = await db.connect(database_url, application_name="iotcloud-provision")
    try:
        async with conn.transaction():
            if not await tenants.exists(conn, tenant_id):
                raise ProvisioningError(f"no tenant {tenant_id!r}")
            done = await bulk_devices.upsert_credentials(
                conn,
                tenant_id=tenant_id,
                device_ids=list(tokens),
                token_hashes=[hash_provision_token(token) for token in tokens.values()],
            )
            refused = [device_id for device_id in tokens if device_id not in done]
            if refused:
                raise ProvisioningError(
                    f"{len(refused)} device ids are deleted or belong to another tenant, "
                    f"e.g. {refused[0]!r}"
                )
    finally:
        await conn.close()
    return tokens
