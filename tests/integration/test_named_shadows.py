"""Named shadows (SPEC §9) through the operator API and the native MQTT topics, with their
history and limits; real PostgreSQL, real broker with the project's plugin."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiomqtt
import asyncpg
import orjson

from tests.conftest import Stack, running_stack
from tests.support import eventually


async def _next_json(client: aiomqtt.Client, suffix: str, timeout: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            if message.topic.value.endswith(suffix):
                body: dict[str, Any] = orjson.loads(message.payload)  # type: ignore[arg-type]
                return body
    raise AssertionError("no message")


def _base(tenant_id: str, device_id: str, name: str) -> str:
    return f"tenant/{tenant_id}/device/{device_id}/shadow/name/{name}/"


async def test_named_shadow_via_api_and_mqtt_with_history(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id, token = created["device_id"], created["provision_token"]
    url = f"/customer/devices/{device_id}/shadows"

    assert (await stack.ui.get(url, headers=admin)).json()["items"] == []
    missing = await stack.ui.get(f"{url}/firmware/twin", headers=admin)
    assert missing.status_code == 404

    # The first update creates it; the classic twin is untouched.
    patched = await stack.ui.patch(
        f"{url}/firmware/twin/desired", json={"desired": {"image": "v2"}}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["shadow"] == "firmware" and body["desired_version"] == 1
    assert body["delta"] == {"image": "v2"} and patched.headers["ETag"] == '"1"'
    classic = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert classic["desired"] == {} and classic["desired_version"] == 0

    # If-Match works as on the classic route: a stale tag is 412 and writes nothing.
    stale = await stack.ui.patch(
        f"{url}/firmware/twin/desired",
        json={"desired": {"image": "v3"}},
        headers={**admin, "If-Match": '"0"'},
    )
    assert stale.status_code == 412

    async with aiomqtt.Client(
        "127.0.0.1", stack.broker.port, username=device_id, password=token, identifier=device_id
    ) as client:
        base = _base(tenant_id, device_id, "firmware")
        await client.subscribe(base + "desired", qos=1)
        await client.subscribe(base + "reported/+", qos=1)
        # Retained, like the classic desired message.
        desired = await _next_json(client, "/firmware/desired")
        assert desired == {"desired": {"image": "v2"}, "version": 1}
        await client.publish(
            base + "reported",
            orjson.dumps({"reported": {"image": "v2"}, "version": 1, "clientToken": "n-1"}),
            qos=1,
        )
        assert await _next_json(client, "/firmware/reported/accepted") == {
            "accepted": True,
            "version": 1,
            "clientToken": "n-1",
        }
        # A version above the desired one is refused and changes nothing.
        await client.publish(
            base + "reported", orjson.dumps({"reported": {"image": "x"}, "version": 7}), qos=1
        )
        rejected = await _next_json(client, "/firmware/reported/rejected")
        assert rejected["accepted"] is False and "unknown version" in rejected["error"]

    shadow = (await stack.ui.get(f"{url}/firmware/twin", headers=admin)).json()
    assert shadow["reported"] == {"image": "v2"} and shadow["sync_status"] == "synced"
    assert shadow["version"] == 2  # two accepted updates of this document
    assert shadow["metadata"]["reported"]["image"]["version"] == 1
    delta = (await stack.ui.get(f"{url}/firmware/twin/delta", headers=admin)).json()
    assert delta["in_sync"] is True and delta["shadow"] == "firmware"

    history = (await stack.ui.get(f"{url}/firmware/twin/history", headers=admin)).json()
    assert [(item["kind"], item["actor"]["type"]) for item in history["items"]] == [
        ("reported", "device"),
        ("desired", "user"),
    ]
    assert all(item["shadow"] == "firmware" for item in history["items"])
    classic_history = (
        await stack.ui.get(f"/customer/devices/{device_id}/twin/history", headers=admin)
    ).json()
    assert classic_history["items"] == []

    names = (await stack.ui.get(url, headers=admin)).json()["items"]
    assert [item["name"] for item in names] == ["firmware"]

    assert (await stack.ui.delete(f"{url}/firmware", headers=admin)).status_code == 204
    assert (await stack.ui.get(f"{url}/firmware/twin", headers=admin)).status_code == 404
    assert (await stack.ui.delete(f"{url}/firmware", headers=admin)).status_code == 404

    # Its retained desired message is cleared: a device that subscribes now gets nothing.
    async def retained() -> list[Any]:
        async with aiomqtt.Client(
            "127.0.0.1",
            stack.broker.port,
            username=device_id,
            password=token,
            identifier=device_id,
        ) as client:
            await client.subscribe(_base(tenant_id, device_id, "firmware") + "desired", qos=1)
            try:
                return [await _next_json(client, "/firmware/desired", timeout=0.5)]
            except (TimeoutError, orjson.JSONDecodeError):
                return []

    assert await eventually(lambda: _empty(retained))


async def test_named_shadow_names_limits_and_tenants(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    _, other = await stack.tenant("admin")
    device_id = (await stack.device(admin))["device_id"]
    url = f"/customer/devices/{device_id}/shadows"

    for bad in ["a" * 65, "sp ace", "sl%2Fash", "dot.name"]:
        response = await stack.ui.patch(
            f"{url}/{bad}/twin/desired", json={"desired": {"a": 1}}, headers=admin
        )
        assert 400 <= response.status_code < 500, (bad, response.text)

    # Another tenant sees nothing and writes nothing.
    foreign = await stack.ui.patch(
        f"{url}/config/twin/desired", json={"desired": {"a": 1}}, headers=other
    )
    assert foreign.status_code == 404
    assert (await stack.ui.get(url, headers=other)).status_code == 404
    assert (await stack.ui.get(url, headers=admin)).json()["items"] == []

    # Over the state limit: 413, and the shadow is not created.
    huge = {"blob": "x" * (70 * 1024)}
    too_big = await stack.ui.patch(
        f"{url}/config/twin/desired", json={"desired": huge}, headers=admin
    )
    assert too_big.status_code == 413
    assert (await stack.ui.get(url, headers=admin)).json()["items"] == []
    bad_body = await stack.ui.patch(
        f"{url}/config/twin/desired", json={"desired": [1]}, headers=admin
    )
    assert bad_body.status_code == 422


async def test_named_shadow_count_is_limited(database_url: str, broker: Any) -> None:
    from tests.conftest import make_settings

    settings = dataclasses.replace(make_settings(database_url, broker.url), max_shadows=2)
    async with running_stack(settings, broker) as stack:
        _, admin = await stack.tenant("admin")
        device_id = (await stack.device(admin))["device_id"]
        url = f"/customer/devices/{device_id}/shadows"
        for name in ("a", "b"):
            response = await stack.ui.patch(
                f"{url}/{name}/twin/desired", json={"desired": {"x": 1}}, headers=admin
            )
            assert response.status_code == 200
        third = await stack.ui.patch(
            f"{url}/c/twin/desired", json={"desired": {"x": 1}}, headers=admin
        )
        assert third.status_code == 409 and "IOTCLOUD_MAX_SHADOWS" in third.text
        # An existing one still takes writes.
        again = await stack.ui.patch(
            f"{url}/a/twin/desired", json={"desired": {"x": 2}}, headers=admin
        )
        assert again.status_code == 200 and again.json()["desired_version"] == 2


async def test_named_shadow_events_and_counts(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    device_id = (await stack.device(admin))["device_id"]
    await stack.ui.patch(
        f"/customer/devices/{device_id}/shadows/cfg/twin/desired",
        json={"desired": {"x": 1}},
        headers=admin,
    )
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        events = await conn.fetch(
            "SELECT kind, shadow, desired_version FROM twin_events"
            " WHERE device_id = $1 AND kind = 'shadow' ORDER BY id",
            device_id,
        )
        assert [(e["shadow"], e["desired_version"]) for e in events][-1] == ("cfg", 1)
        pending = await conn.fetchval(
            "SELECT sum(shadows_pending) FROM tenant_device_counts WHERE tenant_id = $1",
            tenant_id,
        )
        assert pending == 1
        await stack.ui.delete(f"/customer/devices/{device_id}/shadows/cfg", headers=admin)

        async def pending_now() -> Any:
            return await conn.fetchval(
                "SELECT sum(shadows_pending) FROM tenant_device_counts WHERE tenant_id = $1",
                tenant_id,
            )

        assert await eventually(lambda: _is_zero(pending_now))
    finally:
        await conn.close()


async def _empty(read: Any) -> bool:
    return not await read()


async def _is_zero(read: Any) -> bool:
    return bool(await read() == 0)


async def test_fleet_summary_by_shadow(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    first = (await stack.device(admin))["device_id"]
    await stack.device(admin)
    await stack.ui.patch(
        f"/customer/devices/{first}/shadows/cfg/twin/desired",
        json={"desired": {"x": 1}},
        headers=admin,
    )
    classic = (await stack.ui.get("/customer/fleet/summary", headers=admin)).json()
    assert classic["total"] == 2
    named = (await stack.ui.get("/customer/fleet/summary?shadow=cfg", headers=admin)).json()
    assert named == {"total": 1, "synced": 0, "pending": 0, "stale": 1, "connected": 0}
    none = (await stack.ui.get("/customer/fleet/summary?shadow=other", headers=admin)).json()
    assert none["total"] == 0
    bad = await stack.ui.get("/customer/fleet/summary?shadow=no%20way", headers=admin)
    assert bad.status_code == 422


async def test_device_list_by_shadow(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    ids = sorted([(await stack.device(admin))["device_id"] for _ in range(3)])
    for device_id in ids[:2]:
        await stack.ui.patch(
            f"/customer/devices/{device_id}/shadows/cfg/twin/desired",
            json={"desired": {"x": 1}},
            headers=admin,
        )
    first = (await stack.ui.get("/customer/devices?shadow=cfg&limit=1", headers=admin)).json()
    assert [item["device_id"] for item in first["items"]] == ids[:1]
    assert first["items"][0]["shadow"] == "cfg" and first["next"] == ids[0]
    rest = (
        await stack.ui.get(f"/customer/devices?shadow=cfg&cursor={ids[0]}", headers=admin)
    ).json()
    assert [item["device_id"] for item in rest["items"]] == ids[1:2] and rest["next"] is None
    stale = (
        await stack.ui.get("/customer/devices?shadow=cfg&sync_status=stale", headers=admin)
    ).json()
    assert len(stale["items"]) == 2  # never seen
    pending = (
        await stack.ui.get("/customer/devices?shadow=cfg&sync_status=pending", headers=admin)
    ).json()
    assert pending["items"] == []
    for bad in ("shadow=no%20way", "shadow=cfg&sync_status=odd", "shadow=cfg&q=x"):
        response = await stack.ui.get(f"/customer/devices?{bad}", headers=admin)
        assert response.status_code == 422, bad
    classic = (await stack.ui.get("/customer/devices", headers=admin)).json()
    assert len(classic["items"]) == 3
