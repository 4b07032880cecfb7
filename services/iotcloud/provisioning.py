"""Registering devices from the command line, one or many in one transaction."""

from __future__ import annotations

import logging

import aiomqtt

from shared import db
from shared.dynsec import DynSecError, dynsec_session
from shared.errors import Conflict
from shared.mqtt import parse_mqtt_url
from shared.repositories import tenants
from shared.services.devices import NewDevice, create_device, rotate_token

log = logging.getLogger(__name__)


class ProvisioningError(RuntimeError):
    pass


async def create_devices(
    database_url: str,
    mqtt_url: str,
    *,
    tenant_id: str,
    specs: list[tuple[str | None, str | None]],
    broker_required: bool,
) -> list[NewDevice]:
    """Create devices from (device_id, name) pairs and their broker accounts.

    The broker accounts are written before commit, so either both exist or neither. When the
    private broker is not running (``broker_required`` false), the accounts are built from
    the database when it next starts.
    """
    conn = await db.connect(database_url, application_name="iotcloud-cli")
    try:
        async with conn.transaction():
            if not await tenants.exists(conn, tenant_id):
                raise ProvisioningError(f"no tenant {tenant_id!r}")
            created = [
                await create_device(conn, tenant_id=tenant_id, device_id=device_id, name=name)
                for device_id, name in specs
            ]
            target = parse_mqtt_url(mqtt_url)
            try:
                async with dynsec_session(
                    target.host, target.port, target.username, target.password
                ) as dynsec:
                    await dynsec.upsert_devices(
                        [(d.tenant_id, d.device_id, d.provision_token) for d in created]
                    )
            except (aiomqtt.MqttError, DynSecError, TimeoutError, OSError) as exc:
                if broker_required:
                    raise ProvisioningError(
                        f"MQTT broker unavailable, nothing created: {exc}"
                    ) from exc
                log.info("private broker not running; its accounts are rebuilt when it starts")
    finally:
        await conn.close()
    return created


async def provision_fleet(
    database_url: str, mqtt_url: str, *, tenant_id: str, device_ids: list[str]
) -> dict[str, str]:
    """Create these devices, or give existing ones a new token: {device_id: token}.

    For simulators and demos, which must know every token they log in with.
    """
    conn = await db.connect(database_url, application_name="iotcloud-provision")
    tokens: dict[str, str] = {}
    try:
        async with conn.transaction():
            if not await tenants.exists(conn, tenant_id):
                raise ProvisioningError(f"no tenant {tenant_id!r}")
            for device_id in device_ids:
                try:
                    async with conn.transaction():
                        new = await create_device(
                            conn, tenant_id=tenant_id, device_id=device_id, name=None
                        )
                    tokens[device_id] = new.provision_token
                except Conflict:
                    tokens[device_id] = await rotate_token(
                        conn, tenant_id=tenant_id, device_id=device_id
                    )
            target = parse_mqtt_url(mqtt_url)
            async with dynsec_session(
                target.host, target.port, target.username, target.password
            ) as dynsec:
                await dynsec.upsert_devices([(tenant_id, d, t) for d, t in tokens.items()])
    finally:
        await conn.close()
    return tokens
