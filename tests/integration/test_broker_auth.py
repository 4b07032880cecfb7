"""Devices authenticated by the broker against the database (SPEC §7), on a real Mosquitto
with the project's auth plugin and a real PostgreSQL.

Every refusal is shown against a control: the same client doing the allowed thing right
after, so "nothing happened" is never just "nothing happened yet".
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import aiomqtt
import orjson
import pytest

from iotcloud.embedded import SERVICE_USER
from shared.mqtt import SERVICE_CLIENT_PREFIX, parse_mqtt_url
from shared.topics import desired_topic, reply_topic, reported_topic
from tests.conftest import Stack
from tests.support import eventually


def device_client(
    port: int, device_id: str, password: str, *, client_id: str | None = None, **options: Any
) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        username=device_id,
        password=password,
        identifier=device_id if client_id is None else client_id,
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
            identifier=f"{SERVICE_CLIENT_PREFIX}observer-{uuid.uuid4().hex[:6]}",
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


async def refused(port: int, username: str, password: str, client_id: str) -> bool:
    try:
        async with aiomqtt.Client(
            "127.0.0.1", port, username=username, password=password, identifier=client_id, timeout=5
        ):
            return False
    except aiomqtt.MqttError:
        return True


async def test_a_device_must_connect_with_its_own_id_as_client_id(stack: Stack) -> None:
    _, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id, token = device["device_id"], device["provision_token"]
    port = stack.broker.port
    for client_id in (
        f"{device_id}-2",
        f"{SERVICE_CLIENT_PREFIX}ingest_iot-r1",
        "other/device",
        "other+",
        "other#",
        "x" * 129,
    ):
        assert await refused(port, device_id, token, client_id), client_id
    # A user name that cannot be a device id never reaches the database either.
    for username in ("a/b", "a+", "#", "x" * 129, "dev\x00ice"):
        assert await refused(port, username, token, username), username
    # An oversized password is refused, not looked up.
    assert await refused(port, device_id, "tok-" + "x" * 5000, device_id)
    # The control: the same credential with client id = device id is let in.
    assert not await refused(port, device_id, token, device_id)


async def test_the_services_log_in_only_with_their_client_id_prefix(stack: Stack) -> None:
    service = parse_mqtt_url(stack.settings.mqtt_url)
    assert service.username == SERVICE_USER and service.password is not None
    port = stack.broker.port
    assert await refused(port, SERVICE_USER, service.password, "ingest_iot-anything")
    assert await refused(port, SERVICE_USER, "wrong", f"{SERVICE_CLIENT_PREFIX}x")
    assert not await refused(port, SERVICE_USER, service.password, f"{SERVICE_CLIENT_PREFIX}x")


async def test_a_device_cannot_take_the_bridge_session_and_no_report_is_lost(stack: Stack) -> None:
    """The attack of issue 12: a device reconnecting again and again with the bridge's client
    id (clean session) while another device sends 20 QoS 1 reports."""
    tenant_id, headers = await stack.tenant("admin")
    attacker = await stack.device(headers)
    victim = await stack.device(headers)
    port = stack.broker.port
    bridge_id = stack.ingest_app.state.link._client_id
    assert bridge_id.startswith(SERVICE_CLIENT_PREFIX)
    stop = asyncio.Event()
    refusals = 0

    async def attack() -> None:
        nonlocal refusals
        while not stop.is_set():
            if await refused(port, attacker["device_id"], attacker["provision_token"], bridge_id):
                refusals += 1
            else:
                raise AssertionError("the broker let a device take the bridge's client id")

    attacking = asyncio.create_task(attack())
    try:
        async with device_client(port, victim["device_id"], victim["provision_token"]) as dev:
            for n in range(20):
                await dev.publish(
                    reported_topic(tenant_id, victim["device_id"]),
                    orjson.dumps({"reported": {"n": n}, "version": 0, "clientToken": f"c{n}"}),
                    qos=1,
                )
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await attacking
    assert refusals > 0

    async def all_committed() -> int:
        conn = await asyncpg_connect(stack)
        try:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM twin_history WHERE device_id = $1 AND kind = 'reported'",
                victim["device_id"],
            )
        finally:
            await conn.close()
        return count

    async def twenty() -> bool:
        return await all_committed() == 20

    await eventually(twenty, timeout=15)
    assert (await twin(stack, headers, victim["device_id"]))["reported"] == {"n": 19}


async def asyncpg_connect(stack: Stack) -> Any:
    from shared import db

    return await db.connect(stack.settings.database_url, application_name="tests")


async def test_rotation_cuts_the_live_session_within_a_second(stack: Stack) -> None:
    tenant_id, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id = device["device_id"]
    async with device_client(stack.broker.port, device_id, device["provision_token"]) as live:
        await live.subscribe(desired_topic(tenant_id, device_id), qos=1)
        rotated = await stack.ui.post(
            f"/customer/devices/{device_id}/provision-token", headers=headers
        )
        assert rotated.status_code == 200
        started = asyncio.get_running_loop().time()
        assert await session_dropped(live, timeout=1.0), "session still up a second later"
        assert asyncio.get_running_loop().time() - started < 1.0


async def presence(stack: Stack, device_id: str) -> dict[str, Any]:
    conn = await asyncpg_connect(stack)
    try:
        row = await conn.fetchrow(
            """SELECT connected, connected_at, disconnected_at, last_seen
               FROM device_state WHERE device_id = $1""",
            device_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


async def until_presence(stack: Stack, device_id: str, *, connected: bool) -> None:
    """Wait until the broker has recorded the device as connected (or not)."""

    async def recorded() -> bool:
        return (await presence(stack, device_id))["connected"] is connected

    await eventually(recorded, timeout=10)


async def test_connect_and_disconnect_are_recorded_as_presence(stack: Stack) -> None:
    _, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id = device["device_id"]
    assert (await presence(stack, device_id))["connected"] is False
    async with device_client(stack.broker.port, device_id, device["provision_token"]):
        await until_presence(stack, device_id, connected=True)
        now = await presence(stack, device_id)
        # Connecting is contact: a device that connects and waits is not stale.
        assert now["last_seen"] is not None and now["connected_at"] is not None
        assert (await twin(stack, headers, device_id))["sync_status"] != "stale"
    await until_presence(stack, device_id, connected=False)
    after = await presence(stack, device_id)
    assert after["disconnected_at"] >= after["connected_at"]


def raw_connect(port: int, device_id: str, token: str, *, keepalive: int) -> socket.socket:
    """An MQTT 3.1.1 CONNECT by hand, so the test can then go silent without closing."""

    def field(value: bytes) -> bytes:
        return len(value).to_bytes(2, "big") + value

    body = (
        field(b"MQTT")
        + bytes([4, 0b11000010])  # level 4; user name, password, clean session
        + keepalive.to_bytes(2, "big")
        + field(device_id.encode())
        + field(device_id.encode())
        + field(token.encode())
    )
    sock = socket.create_connection(("127.0.0.1", port), 5)
    sock.sendall(bytes([0x10, len(body)]) + body)
    connack = sock.recv(4)
    assert connack == bytes([0x20, 2, 0, 0]), connack
    return sock


async def test_a_vanished_connection_counts_as_disconnected_after_the_keep_alive(
    stack: Stack,
) -> None:
    _, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id = device["device_id"]
    sock = raw_connect(stack.broker.port, device_id, device["provision_token"], keepalive=1)
    try:
        await until_presence(stack, device_id, connected=True)
        # Silent, socket still open: the broker gives up after 1.5 x keep-alive.
        silent_since = asyncio.get_running_loop().time()
        await until_presence(stack, device_id, connected=False)
        assert asyncio.get_running_loop().time() - silent_since >= 1.0
    finally:
        sock.close()


async def test_a_restarted_broker_still_knows_every_device_and_clears_old_presence(
    stack: Stack,
) -> None:
    """Nothing per device lives in the broker: kill it, start it again, devices log in."""
    tenant_id, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id = device["device_id"]
    sock = raw_connect(stack.broker.port, device_id, device["provision_token"], keepalive=60)
    try:
        await until_presence(stack, device_id, connected=True)
        stack.broker.kill()  # no disconnect is ever reported by this instance
        stack.broker.start()
        await until_presence(stack, device_id, connected=False)
    finally:
        sock.close()
    async with device_client(stack.broker.port, device_id, device["provision_token"]) as dev:
        granted = await dev.subscribe(desired_topic(tenant_id, device_id), qos=1)
        assert list(granted) == [1]


async def test_a_revocation_missed_while_the_broker_was_away_from_the_database_still_cuts(
    stack: Stack,
) -> None:
    """The notification is lost with the broker's LISTEN connection; when that comes back,
    the broker checks every connected device again."""
    tenant_id, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id = device["device_id"]
    async with device_client(stack.broker.port, device_id, device["provision_token"]) as live:
        await live.subscribe(desired_topic(tenant_id, device_id), qos=1)
        conn = await asyncpg_connect(stack)
        try:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE devices SET token_hash = sha256('other'::bytea) WHERE device_id = $1",
                    device_id,
                )
                cut = await conn.fetchval(
                    """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                       WHERE application_name = 'iotcloud-broker-listen'
                         AND datname = current_database()"""
                )
                assert cut == 1
                await conn.execute("SELECT pg_sleep(0.3)")  # gone before the NOTIFY
        finally:
            await conn.close()
        assert await session_dropped(live, timeout=10), "the revoked session survived"
    assert await refused(stack.broker.port, device_id, device["provision_token"], device_id)
