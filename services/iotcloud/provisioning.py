"""Registering devices from the command line, one or many in one transaction."""

from __future__ import annotations

import logging

import aiomqtt

from shared import db
from shared.dynsec import DynSecError, broker_credential, dynsec_session
from shared.mqtt import parse_mqtt_url
from shared.repositories import bulk_devices, tenants
from shared.security import hash_provision_token, new_provision_token
from shared.services.devices import DEVICE_ID_RE, NewDevice, create_device

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

    For simulators, demos and benchmarks, which must know every token they log in with: the
    whole fleet in a couple of statements and one transaction, its broker accounts written
    before the commit (either both exist or neither).
    """
    for device_id in device_ids:
        if not DEVICE_ID_RE.match(device_id):
            raise ProvisioningError(f"not a valid device id: {device_id!r}")
    tokens = {device_id: new_provision_token() for device_id in device_ids}
    credentials = [broker_credential(token) for token in tokens.values()]
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
                broker_salts=[credential.salt for credential in credentials],
                broker_hashes=[credential.password_hash for credential in credentials],
            )
            refused = [device_id for device_id in tokens if device_id not in done]
            if refused:
                raise ProvisioningError(
                    f"{len(refused)} device ids are deleted or belong to another tenant, "
                    f"e.g. {refused[0]!r}"
                )
            target = parse_mqtt_url(mqtt_url)
            async with dynsec_session(
                target.host, target.port, target.username, target.password
            ) as dynsec:
                await dynsec.upsert_devices([(tenant_id, d, t) for d, t in tokens.items()])
    finally:
        await conn.close()
    return tokens
