"""Named shadows' retained desired messages (SPEC §9, like the classic ones of §7): a fresh
broker gets them all again, and deleting a device (or its tenant) clears them; real
PostgreSQL, real broker with the project's plugin."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from typing import Any

import aiomqtt
import asyncpg
import orjson

from shared import db
from shared.mqtt import SERVICE_CLIENT_PREFIX, parse_mqtt_url
from shared.repositories import tenants as tenants_repo
from tests.conftest import Stack
from tests.integration.test_broker_delivery import publisher, restart
from tests.support import eventually


async def named_retained(stack: Stack, tenant_id: str, expect: int) -> dict[str, Any]:
    """Every retained named desired message of the tenant, by ``device/name``."""
    service = parse_mqtt_url(stack.settings.mqtt_url)
    found: dict[str, Any] = {}
    async with aiomqtt.Client(
        "127.0.0.1",
        stack.broker.port,
        username=service.username,
        password=service.password,
        identifier=f"{SERVICE_CLIENT_PREFIX}probe-{uuid.uuid4().hex[:6]}",
    ) as client:
        await client.subscribe(f"tenant/{tenant_id}/device/+/shadow/name/+/desired", qos=1)
        try:
            async with asyncio.timeout(1.5):
                async for message in client.messages:
                    if message.retain and message.payload:
                        parts = message.topic.value.split("/")
                        found[f"{parts[3]}/{parts[6]}"] = orjson.loads(
                            message.payload  # type: ignore[arg-type]
                        )
                    if len(found) >= expect > 0:
                        break
        except TimeoutError:
            pass
    return found


async def _named_fleet(stack: Stack, count: int) -> tuple[str, dict[str, str], list[str]]:
    tenant_id, admin = await stack.tenant("admin")
    ids = []
    for n in range(count):
        device_id = (await stack.device(admin))["device_id"]
        for name in ("fw", "cfg"):
            for version in range(1, 3 if name == "fw" else 2):
                patched = await stack.ui.patch(
                    f"/customer/devices/{device_id}/shadows/{name}/twin/desired",
                    json={"desired": {"n": n, "v": version}},
                    headers=admin,
                )
                assert patched.status_code == 200, patched.text
        ids.append(device_id)
    return tenant_id, admin, ids


def _versions(held: dict[str, Any]) -> dict[str, int]:
    return {key: body["version"] for key, body in held.items()}


async def test_a_fresh_broker_gets_every_named_desired_state_again(stack: Stack) -> None:
    tenant_id, _, ids = await _named_fleet(stack, 3)
    expected = {f"{d}/{name}": (2 if name == "fw" else 1) for d in ids for name in ("fw", "cfg")}

    async def all_held() -> bool:
        return _versions(await named_retained(stack, tenant_id, len(expected))) == expected

    assert await eventually(all_held, timeout=10, interval=0.3)

    before = publisher(stack).recoveries
    stack.broker.kill()
    shutil.rmtree(stack.broker.embedded.root / "data")  # a new, empty broker
    stack.broker.start()

    async def recovered() -> bool:
        return publisher(stack).recoveries > before

    assert await eventually(recovered, timeout=20, interval=0.1)
    assert publisher(stack).named_refill >= len(expected)
    assert await eventually(all_held, timeout=20, interval=0.5)
    held = await named_retained(stack, tenant_id, len(expected))
    assert held[f"{ids[0]}/fw"] == {"desired": {"n": 0, "v": 2}, "version": 2}


async def test_deleting_a_device_or_tenant_clears_its_named_retained_messages(
    stack: Stack,
) -> None:
    tenant_id, admin, ids = await _named_fleet(stack, 2)

    async def held_count(n: int) -> Any:
        async def check() -> bool:
            return len(await named_retained(stack, tenant_id, n)) == n

        return check

    assert await eventually(await held_count(4), timeout=10, interval=0.3)
    deleted = await stack.ui.delete(f"/customer/devices/{ids[0]}", headers=admin)
    assert deleted.status_code == 204, deleted.text

    async def only_the_other() -> bool:
        held = await named_retained(stack, tenant_id, 2)
        return sorted(held) == [f"{ids[1]}/cfg", f"{ids[1]}/fw"]

    assert await eventually(only_the_other, timeout=10, interval=0.3)
    # Its shadows are gone with it (and no longer counted as awaiting a report).
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM device_shadows WHERE device_id = $1", ids[0]
        )
        assert left == 0
        pending = await conn.fetchval(
            "SELECT sum(shadows_pending) FROM tenant_device_counts WHERE tenant_id = $1",
            tenant_id,
        )
        assert pending == 2
    finally:
        await conn.close()

    # Deleting the tenant (`iotcloud tenant delete`) clears the rest.
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        async with conn.transaction():
            await tenants_repo.delete(conn, tenant_id)
    finally:
        await conn.close()

    async def none_left() -> bool:
        return await named_retained(stack, tenant_id, 0) == {}

    assert await eventually(none_left, timeout=10, interval=0.3)


async def test_a_killed_broker_gets_back_the_named_messages_its_last_save_missed(
    stack: Stack,
) -> None:
    tenant_id, admin, ids = await _named_fleet(stack, 2)
    expected = {f"{d}/{name}": (2 if name == "fw" else 1) for d in ids for name in ("fw", "cfg")}

    async def held(wanted: dict[str, int]) -> Any:
        async def check() -> bool:
            return _versions(await named_retained(stack, tenant_id, len(wanted))) == wanted

        return check

    assert await eventually(await held(expected), timeout=10, interval=0.3)
    await restart(stack)  # saved: every named shadow as expected
    assert publisher(stack).named_refill == 0
    patched = await stack.ui.patch(
        f"/customer/devices/{ids[0]}/shadows/cfg/twin/desired",
        json={"desired": {"late": True}},
        headers=admin,
    )
    assert patched.status_code == 200
    # A classic write too, so the broker's marker moves past the named one's publish.
    await stack.ui.patch(
        f"/customer/devices/{ids[1]}/twin/desired", json={"desired": {"x": 1}}, headers=admin
    )
    later = {**expected, f"{ids[0]}/cfg": 2}
    assert await eventually(await held(later), timeout=10, interval=0.3)
    await restart(stack, kill=True)  # within the 5 s autosave: that write is not on disk
    assert 1 <= publisher(stack).named_refill < len(expected)
    assert await eventually(await held(later), timeout=10, interval=0.3)
