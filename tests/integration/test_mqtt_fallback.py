"""The in-process fallback broker (amqtt) enforces the same per-device rules as Mosquitto."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import orjson
import pytest

from shared import db
from shared.mqtt import SERVICE_CLIENT_PREFIX
from shared.topics import desired_topic, reply_topic, reported_topic
from tests.conftest import Stack, make_settings, running_stack
from tests.integration.test_broker_auth import device_client, next_message, session_dropped
from tests.support import ROOT, Broker, eventually, free_port


@pytest.fixture
def fallback_broker(tmp_path: Path, database_url: str) -> Iterator[Broker]:
    """``python -m iotcloud.fallback_broker`` as ``iotcloud up`` runs it, on a free port."""
    # Same home and port as the broker's handle, so its service secret is the one we use.
    handle = Broker(tmp_path / "home", free_port(), database_url)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "IOTCLOUD_HOME": str(handle.home),
        "IOTCLOUD_BROKER_PORT": str(handle.port),
        "PYTHONPATH": str(ROOT / "services"),
    }
    handle.embedded.service_password()  # created before the broker reads it
    (tmp_path / "home").mkdir(exist_ok=True)
    log = (tmp_path / "fallback.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "iotcloud.fallback_broker"], env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", handle.port), 0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fallback broker did not start; see {log.name}") from None
                time.sleep(0.05)
        yield handle
    finally:
        process.kill()
        process.wait()


@pytest.fixture
async def fallback_stack(database_url: str, fallback_broker: Broker) -> AsyncIterator[Stack]:
    # It refuses "$aws/..." topics (MQTT-4.7.2-1), so it runs without the AWS topic tree.
    settings = make_settings(database_url, fallback_broker.url, aws_topics=False)
    async with running_stack(settings, fallback_broker) as running:
        yield running


async def test_core_flow_with_per_device_rules(fallback_stack: Stack) -> None:
    stack = fallback_stack
    port = stack.broker.port
    tenant_id, headers = await stack.tenant("admin")
    a = await stack.device(headers)  # the services' dynamic-security commands are answered
    b = await stack.device(headers)

    # A wrong password and an unknown device are refused.
    with pytest.raises(aiomqtt.MqttError):
        async with device_client(port, a["device_id"], "tok-wrong"):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with device_client(port, "nobody", a["provision_token"]):
            pass

    async with device_client(port, a["device_id"], a["provision_token"]) as device_a:
        assert list(await device_a.subscribe(desired_topic(tenant_id, b["device_id"]), 1)) == [128]
        assert list(await device_a.subscribe("tenant/#", 1)) == [128]
        own_filter = f"tenant/{tenant_id}/device/{a['device_id']}/shadow/#"
        assert list(await device_a.subscribe(own_filter, 1)) == [1]

        # Desired out: the device gets its own desired state, retained.
        for device in (a, b):
            patched = await stack.ui.patch(
                f"/customer/devices/{device['device_id']}/twin/desired",
                json={"desired": {"owner": device["device_id"]}},
                headers=headers,
            )
            assert patched.status_code == 200
        desired = await next_message(device_a)
        assert desired.topic.value == desired_topic(tenant_id, a["device_id"])
        assert orjson.loads(desired.payload) == {  # type: ignore[arg-type]
            "desired": {"owner": a["device_id"]},
            "version": 1,
        }

        # Reported in: B's topic is refused, A's own is applied and answered.
        await device_a.publish(
            reported_topic(tenant_id, b["device_id"]),
            orjson.dumps({"reported": {"hijacked": True}, "version": 1}),
            qos=1,
        )
        await device_a.publish(
            reported_topic(tenant_id, a["device_id"]),
            orjson.dumps({"reported": {"owner": a["device_id"]}, "version": 1}),
            qos=1,
        )
        echo = await next_message(device_a)  # its own subscription covers its own report
        assert echo.topic.value == reported_topic(tenant_id, a["device_id"])
        reply = await next_message(device_a)
        assert reply.topic.value == reply_topic(tenant_id, a["device_id"], accepted=True)
        assert orjson.loads(reply.payload) == {"accepted": True, "version": 1}  # type: ignore[arg-type]

    twin_a = (
        await stack.ui.get(f"/customer/devices/{a['device_id']}/twin", headers=headers)
    ).json()
    assert (twin_a["reported"], twin_a["sync_status"]) == ({"owner": a["device_id"]}, "synced")
    twin_b = (
        await stack.ui.get(f"/customer/devices/{b['device_id']}/twin", headers=headers)
    ).json()
    assert (twin_b["reported"], twin_b["reported_version"]) == ({}, 0)

    # Rotation cuts the session on the old token, which then stops working.
    async with device_client(port, a["device_id"], a["provision_token"]) as live:
        rotated = await stack.ui.post(
            f"/customer/devices/{a['device_id']}/provision-token", headers=headers
        )
        assert rotated.status_code == 200
        assert await session_dropped(live)
    with pytest.raises(aiomqtt.MqttError):
        async with device_client(port, a["device_id"], a["provision_token"]):
            pass
    async with device_client(port, a["device_id"], rotated.json()["provision_token"]):
        pass

    # Deleting a device cuts its live session.
    async with device_client(port, b["device_id"], b["provision_token"]) as live:
        deleted = await stack.ui.delete(f"/customer/devices/{b['device_id']}", headers=headers)
        assert deleted.status_code == 204
        assert await session_dropped(live)

    async def refused() -> bool:
        try:
            async with device_client(port, b["device_id"], b["provision_token"]):
                return False
        except aiomqtt.MqttError:
            return True

    await eventually(refused)


async def test_client_ids_and_presence_follow_the_plugins_rules(fallback_stack: Stack) -> None:
    stack = fallback_stack
    port = stack.broker.port
    _, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id, token = device["device_id"], device["provision_token"]
    for client_id in (f"{device_id}-2", f"{SERVICE_CLIENT_PREFIX}ingest_iot-r1"):
        with pytest.raises(aiomqtt.MqttError):
            async with device_client(port, device_id, token, client_id=client_id):
                pass

    async def connected() -> bool:
        return bool(await presence_of(stack, device_id))

    async with device_client(port, device_id, token):
        await eventually(connected)

    async def disconnected() -> bool:
        return not await presence_of(stack, device_id)

    await eventually(disconnected)


async def presence_of(stack: Stack, device_id: str) -> bool:
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        connected: bool = await conn.fetchval(
            "SELECT connected FROM device_state WHERE device_id = $1", device_id
        )
    finally:
        await conn.close()
    return connected


async def test_named_shadow_reports_on_the_fallback_broker(fallback_stack: Stack) -> None:
    """The in-process broker applies the plugin's rules to named shadows (SPEC §9), and
    an operator write that queues AWS messages does not break its link."""
    import asyncio

    stack = fallback_stack
    tenant_id, admin = await stack.tenant("admin")
    mine = await stack.device(admin)
    other = await stack.device(admin)
    device_id = mine["device_id"]
    await stack.ui.patch(
        f"/customer/devices/{device_id}/twin/desired", json={"desired": {"a": 1}}, headers=admin
    )
    base = f"tenant/{tenant_id}/device/{device_id}/shadow/name/cfg/"
    async with aiomqtt.Client(
        "127.0.0.1",
        stack.broker.port,
        username=device_id,
        password=mine["provision_token"],
        identifier=device_id,
    ) as client:
        await client.subscribe(base + "reported/+", qos=1)
        # Another device's named shadow is refused by the broker.
        await client.publish(
            f"tenant/{tenant_id}/device/{other['device_id']}/shadow/name/cfg/reported",
            orjson.dumps({"reported": {"pwned": True}, "version": 0}),
            qos=1,
        )
        await client.publish(
            base + "reported", orjson.dumps({"reported": {"on": True}, "version": 0}), qos=1
        )
        async with asyncio.timeout(10):
            async for message in client.messages:
                if message.topic.value.endswith("/reported/accepted"):
                    break
    shadow = (
        await stack.ui.get(f"/customer/devices/{device_id}/shadows/cfg/twin", headers=admin)
    ).json()
    assert shadow["reported"] == {"on": True}
    theirs = await stack.ui.get(
        f"/customer/devices/{other['device_id']}/shadows/cfg/twin", headers=admin
    )
    assert theirs.status_code == 404
