"""Keep the broker's device accounts in step with the registry.

Creating or rotating runs inside the registry transaction, before commit: if the broker
cannot take the account, nothing is written and the caller gets 503. Deleting runs after
commit; a broker that missed it is corrected by :func:`reconcile`.
"""

from __future__ import annotations

import logging

import aiomqtt

from shared.db import Connection
from shared.dynsec import DynSecClient, DynSecError
from shared.errors import ServiceUnavailable
from shared.mqtt import BrokerLink
from shared.repositories import devices as devices_repo

log = logging.getLogger(__name__)


async def upsert(link: BrokerLink, *, tenant_id: str, device_id: str, password: str) -> None:
    try:
        if not await link.wait_connected(3) or link.dynsec is None:
            raise ServiceUnavailable("MQTT broker unavailable; nothing was changed, retry shortly")
        await link.dynsec.upsert_device(tenant_id=tenant_id, device_id=device_id, password=password)
    except (aiomqtt.MqttError, DynSecError, TimeoutError) as exc:
        log.warning("broker account for %s not written: %s", device_id, exc)
        raise ServiceUnavailable(
            "MQTT broker unavailable; nothing was changed, retry shortly"
        ) from exc


async def remove(link: BrokerLink, device_id: str) -> None:
    """Best effort: the device is already deleted in the database."""
    try:
        if await link.wait_connected(3) and link.dynsec is not None:
            await link.dynsec.delete_device(device_id)
            return
    except (aiomqtt.MqttError, DynSecError, TimeoutError) as exc:
        log.warning("broker account for deleted device %s not removed yet: %s", device_id, exc)
    else:
        log.warning(
            "broker unavailable; deleted device %s is removed at the next reconcile", device_id
        )


async def reconcile(dynsec: DynSecClient, conn: Connection) -> int:
    """Remove the broker accounts of deleted devices; report live devices without one.

    Only names the registry knows as deleted devices are touched, so other accounts on a
    shared broker are safe. A live device missing from the broker cannot be re-created
    through the control API (it takes only plain passwords): a private broker is rebuilt
    from the database's broker credentials when it starts; otherwise rotate the token.
    """
    on_broker = set(await dynsec.list_clients())
    stale = on_broker & set(await devices_repo.revoked_ids(conn))
    for device_id in sorted(stale):
        await dynsec.delete_device(device_id)
    live = {row["device_id"] for row in await devices_repo.broker_accounts(conn)}
    missing = live - on_broker
    if missing:
        log.warning(
            "%d live devices have no broker account (e.g. %s); restart the private broker "
            "or rotate their tokens",
            len(missing),
            sorted(missing)[:3],
        )
    return len(stale)
