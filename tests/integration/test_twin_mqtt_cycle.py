"""The sync cycle over MQTT only, and the bridge's rejection paths."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import orjson

from iotcloud.embedded import SERVICE_USER
from shared.mqtt import SERVICE_CLIENT_PREFIX
from shared.topics import desired_topic, reported_topic
from tests.conftest import Stack
from tests.support import eventually


async def _next_json(
    client: aiomqtt.Client, topic_suffix: str, timeout: float = 5
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            if message.topic.value.endswith(topic_suffix):
                body: dict[str, Any] = orjson.loads(message.payload)  # type: ignore[arg-type]
                return body
    raise AssertionError("no message")


async def test_full_sync_cycle_over_mqtt(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id, token = created["device_id"], created["provision_token"]
    patched = await stack.ui.patch(
        f"/customer/devices/{device_id}/twin/desired",
        json={"desired": {"mode": "eco"}},
        headers=admin,
    )
    assert patched.json()["desired_version"] == 1

    # The device wakes up later and gets the retained desired state at once.
    async with aiomqtt.Client(
        "127.0.0.1", stack.broker.port, username=device_id, password=token, identifier=device_id
    ) as client:
        await client.subscribe(desired_topic(tenant_id, device_id), qos=1)
        await client.subscribe(reported_topic(tenant_id, device_id) + "/+", qos=1)
        desired = await _next_json(client, "/desired")
        assert desired == {"desired": {"mode": "eco"}, "version": 1}
        report = {
            "reported": desired["desired"],
            "version": desired["version"],
            "clientToken": "c-1",
        }
        await client.publish(reported_topic(tenant_id, device_id), orjson.dumps(report), qos=1)
        assert await _next_json(client, "/reported/accepted") == {
            "accepted": True,
            "version": 1,
            "clientToken": "c-1",
        }

    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert twin["sync_status"] == "synced"
    assert twin["reported"] == {"mode": "eco"} and twin["reported_version"] == 1


async def test_bridge_rejects_garbage_and_keeps_running(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id, token = created["device_id"], created["provision_token"]
    topic = reported_topic(tenant_id, device_id)
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(20):
        node["d"] = {}
        node = node["d"]
    garbage = [
        (b"not json at all", "not valid JSON"),
        (b"[1,2,3]", "JSON object"),
        (orjson.dumps({"reported": "x", "version": 0}), "'reported'"),
        (orjson.dumps({"reported": {}, "version": "1"}), "'version'"),
        (orjson.dumps({"reported": deep, "version": 0}), "nested"),
        (orjson.dumps({"reported": {"b": "x" * 70_000}, "version": 0}), "bytes"),
        (orjson.dumps({"reported": {}, "version": 7, "clientToken": "v7"}), "unknown version"),
    ]
    async with aiomqtt.Client(
        "127.0.0.1", stack.broker.port, username=device_id, password=token, identifier=device_id
    ) as client:
        await client.subscribe(topic + "/+", qos=1)
        for payload, reason in garbage:
            await client.publish(topic, payload, qos=1)
            rejected = await _next_json(client, "/reported/rejected")
            assert rejected["accepted"] is False and reason in rejected["error"], (
                payload[:40],
                rejected,
            )
            assert rejected["version"] == 0
        assert rejected["clientToken"] == "v7"
        # Still running: a good report goes through.
        await client.publish(topic, orjson.dumps({"reported": {"ok": 1}, "version": 0}), qos=1)
        assert (await _next_json(client, "/reported/accepted"))["accepted"] is True

    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert twin["reported"] == {"ok": 1}
    assert twin["last_seen"] is not None


async def test_bridge_drops_reports_on_topics_of_no_such_device(stack: Stack) -> None:
    """Even the service account (which may publish anywhere) cannot make the bridge apply a
    report whose topic names a device outside the topic's tenant."""
    tenant_a, admin_a = await stack.tenant("admin")
    tenant_b, _ = await stack.tenant("admin")
    device_id = (await stack.device(admin_a))["device_id"]
    target = stack.broker.embedded
    from prometheus_client import REGISTRY

    def foreign() -> float:
        return (
            REGISTRY.get_sample_value(
                "iotcloud_reports_total", {"transport": "mqtt", "outcome": "foreign"}
            )
            or 0.0
        )

    before = foreign()
    async with aiomqtt.Client(
        "127.0.0.1",
        stack.broker.port,
        username=SERVICE_USER,
        password=target.service_password(),
        identifier=f"{SERVICE_CLIENT_PREFIX}test-intruder",
    ) as client:
        body = orjson.dumps({"reported": {"pwned": True}, "version": 0})
        await client.publish(reported_topic(tenant_b, device_id), body, qos=1)
        await client.publish(reported_topic(tenant_a, "no-such-device"), body, qos=1)

    async def counted() -> bool:
        return foreign() >= before + 2

    await eventually(counted)
    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin_a)).json()
    assert twin["reported"] == {}
