"""Per-device broker accounts on a real Mosquitto with dynamic security (SPEC §7).

Every refusal is shown against a control: the same client doing the allowed thing right
after, so "nothing happened" is never just "nothing happened yet".
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiomqtt
import orjson
import pytest

from iotcloud.supervisor import broker_accounts_from_db
from shared.dynsec import dynsec_session
from shared.mqtt import parse_mqtt_url
from shared.topics import desired_topic, reply_topic, reported_topic
from tests.conftest import Stack
from tests.support import eventually


def device_client(port: int, device_id: str, password: str, **options: Any) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        username=device_id,
        password=password,
        identifier=f"{device_id}-{uuid.uuid4().hex[:6]}",
        timeout=5,
        **options,
    )


async def next_message(client: aiomqtt.Client, timeout: float = 5.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            return message
    raise AssertionError("message stream ended")


async def session_dropped(client: aiomqtt.Client, timeout: float = 5.0) -> bool:
    """True once the broker has closed this client's connection."""
    try:
        async with asyncio.timeout(timeout):
            async for _ in client.messages:
                pass
    except aiomqtt.MqttError:
        return True
    return False


async def twin(stack: Stack, headers: dict[str, str], device_id: str) -> dict[str, Any]:
    response = await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_device_can_touch_only_its_own_twin(stack: Stack) -> None:
    tenant_id, headers = await stack.tenant("admin")
    a = await stack.device(headers, device_id=f"a-{uuid.uuid4().hex[:6]}")
    b = await stack.device(headers, device_id=f"b-{uuid.uuid4().hex[:6]}")
    patched = await stack.ui.patch(
        f"/customer/devices/{b['device_id']}/twin/desired",
        json={"desired": {"secret": "b-only"}},
        headers=headers,
    )
    assert patched.status_code == 200
    port = stack.broker.port
    service = parse_mqtt_url(stack.settings.mqtt_url)

    async with (
        aiomqtt.Client(
            "127.0.0.1",
            port,
            username=service.username,
            password=service.password,
            identifier=f"observer-{uuid.uuid4().hex[:6]}",
        ) as observer,
        device_client(port, a["device_id"], a["provision_token"]) as device_a,
    ):
        await observer.subscribe(f"tenant/{tenant_id}/#", qos=1)
        # Subscribing to B's desired (or to everything) is refused by the broker itself.
        refused = await device_a.subscribe(desired_topic(tenant_id, b["device_id"]), qos=1)
        assert list(refused) == [128]
        assert list(await device_a.subscribe("tenant/#", qos=1)) == [128]
        assert list(await device_a.subscribe("$share/x/tenant/+/device/+/shadow/#", qos=1)) == [128]
        own = await device_a.subscribe(
            f"tenant/{tenant_id}/device/{a['device_id']}/shadow/#", qos=1
        )
        assert list(own) == [1]

        # A writes to B's reported topic, then to its own: only its own gets through.
        await device_a.publish(
            reported_topic(tenant_id, b["device_id"]),
            orjson.dumps({"reported": {"hijacked": True}, "version": 1, "clientToken": "evil"}),
            qos=1,
        )
        # Nor may it write its own desired state or forge the service's replies.
        await device_a.publish(
            desired_topic(tenant_id, a["device_id"]),
            orjson.dumps({"desired": {"forged": True}, "version": 99}),
            qos=1,
            retain=True,
        )
        await device_a.publish(
            reply_topic(tenant_id, a["device_id"], accepted=True),
            orjson.dumps({"accepted": True, "version": 99}),
            qos=1,
        )
        await device_a.publish(
            reported_topic(tenant_id, a["device_id"]),
            orjson.dumps({"reported": {"mine": 1}, "version": 0, "clientToken": "own"}),
            qos=1,
        )
        seen: list[str] = []
        async with asyncio.timeout(10):
            async for message in observer.messages:
                seen.append(message.topic.value)
                if message.topic.value == reply_topic(tenant_id, a["device_id"], accepted=True):
                    break
        assert reported_topic(tenant_id, a["device_id"]) in seen
        assert not any(b["device_id"] in topic and "reported" in topic for topic in seen)
        assert desired_topic(tenant_id, a["device_id"]) not in seen

        # A's own subscription got its own report and the real reply first: nothing of
        # B's, and none of its forged messages.
        reply = await next_message(device_a)
        assert reply.topic.value == reported_topic(tenant_id, a["device_id"])
        reply = await next_message(device_a)
        assert reply.topic.value == reply_topic(tenant_id, a["device_id"], accepted=True)
        assert orjson.loads(reply.payload) == {  # type: ignore[arg-type]
            "accepted": True,
            "version": 0,
            "clientToken": "own",
        }

    twin_b = await twin(stack, headers, b["device_id"])
    assert twin_b["reported"] == {}
    assert twin_b["last_seen"] is None
    assert (await twin(stack, headers, a["device_id"]))["reported"] == {"mine": 1}


async def test_wrong_or_unknown_credentials_are_refused(stack: Stack) -> None:
    _, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    port = stack.broker.port
    with pytest.raises(aiomqtt.MqttError):
        async with device_client(port, device["device_id"], "tok-not-the-token"):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with device_client(port, "no-such-device", device["provision_token"]):
            pass
    async with device_client(port, device["device_id"], device["provision_token"]):
        pass


async def test_rotation_changes_the_password_and_cuts_the_old_session(stack: Stack) -> None:
    tenant_id, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id, old = device["device_id"], device["provision_token"]
    port = stack.broker.port
    async with device_client(port, device_id, old) as live:
        await live.subscribe(desired_topic(tenant_id, device_id), qos=1)
        rotated = await stack.ui.post(
            f"/customer/devices/{device_id}/provision-token", headers=headers
        )
        assert rotated.status_code == 200
        assert await session_dropped(live), "the session on the old token survived rotation"
    new = rotated.json()["provision_token"]
    assert new != old
    with pytest.raises(aiomqtt.MqttError):
        async with device_client(port, device_id, old):
            pass
    async with device_client(port, device_id, new) as fresh:
        assert list(await fresh.subscribe(desired_topic(tenant_id, device_id), qos=1)) == [1]


async def test_delete_removes_the_account_and_cuts_the_live_session(stack: Stack) -> None:
    tenant_id, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id, token = device["device_id"], device["provision_token"]
    port = stack.broker.port
    async with device_client(port, device_id, token) as live:
        await live.subscribe(desired_topic(tenant_id, device_id), qos=1)
        deleted = await stack.ui.delete(f"/customer/devices/{device_id}", headers=headers)
        assert deleted.status_code == 204
        assert await session_dropped(live), "the deleted device stayed connected"
    with pytest.raises(aiomqtt.MqttError):
        async with device_client(port, device_id, token):
            pass
    service = parse_mqtt_url(stack.settings.mqtt_url)
    async with dynsec_session("127.0.0.1", port, service.username, service.password) as dynsec:
        assert device_id not in await dynsec.list_clients()


async def test_start_up_reconcile_removes_accounts_of_deleted_devices(stack: Stack) -> None:
    """A delete whose broker step was lost (broker down) is finished when ingest reconnects."""
    _, headers = await stack.tenant("admin")
    kept = await stack.device(headers)
    gone = await stack.device(headers)
    stack.broker.kill()
    deleted = await stack.ui.delete(f"/customer/devices/{gone['device_id']}", headers=headers)
    assert deleted.status_code == 204  # the database is the truth; the broker catches up
    # Restart on the broker's own (now stale) account file, as an external broker would keep it.
    stack.broker.start(rebuild=False)
    port = stack.broker.port

    async def refused() -> bool:
        try:
            async with device_client(port, gone["device_id"], gone["provision_token"]):
                return False
        except aiomqtt.MqttError:
            return True

    await eventually(refused, timeout=15, interval=0.2)
    async with device_client(port, kept["device_id"], kept["provision_token"]):
        pass


async def test_a_broker_that_lost_its_account_file_is_rebuilt_from_the_database(
    stack: Stack,
) -> None:
    tenant_id, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    stack.broker.kill()
    stack.broker.embedded.dynsec_file.unlink()
    stack.broker.start(await broker_accounts_from_db(stack.settings.database_url))
    async with device_client(
        stack.broker.port, device["device_id"], device["provision_token"]
    ) as c:
        granted = await c.subscribe(desired_topic(tenant_id, device["device_id"]), qos=1)
        assert list(granted) == [1]
