"""The AWS IoT Device Shadow topic tree (SPEC §9) served by ingest_iot's bridge: a device
as a plain MQTT client with its token login, real PostgreSQL, real broker and plugin."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import asyncpg
import orjson
import pytest

from tests.conftest import Stack, make_settings, running_stack
from tests.support import eventually


class Device:
    """A device on the AWS topics: publishes requests, collects every reply by topic."""

    def __init__(self, client: aiomqtt.Client, thing: str) -> None:
        self.client = client
        self.thing = thing
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def prefix(self, shadow: str = "") -> str:
        return f"$aws/things/{self.thing}/shadow/" + (f"name/{shadow}/" if shadow else "")

    async def pump(self) -> None:
        async for message in self.client.messages:
            payload = message.payload
            assert isinstance(payload, bytes | bytearray)
            try:
                body = orjson.loads(payload)
            except orjson.JSONDecodeError:
                body = None  # its own request echoed (it subscribes to its whole tree)
            await self.inbox.put((message.topic.value, body))

    async def request(
        self, operation: str, body: Any = None, *, shadow: str = "", raw: bytes | None = None
    ) -> None:
        payload = raw if raw is not None else orjson.dumps(body if body is not None else {})
        await self.client.publish(self.prefix(shadow) + operation, payload, qos=1)

    async def expect(self, suffix: str, timeout: float = 5) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                topic, body = await self.inbox.get()
                if topic.endswith(suffix):
                    return body

    async def quiet(self, seconds: float = 0.5) -> list[tuple[str, Any]]:
        await asyncio.sleep(seconds)
        seen = []
        while not self.inbox.empty():
            seen.append(self.inbox.get_nowait())
        return seen


@contextlib.asynccontextmanager
async def aws_device(stack: Stack, device_id: str, token: str) -> AsyncIterator[Device]:
    # The replica that leads (publishes desired state) answers the AWS topics.
    assert await eventually(_leads(stack))
    async with aiomqtt.Client(
        "127.0.0.1", stack.broker.port, username=device_id, password=token, identifier=device_id
    ) as client:
        await client.subscribe(f"$aws/things/{device_id}/shadow/#", qos=1)
        device = Device(client, device_id)
        pump = asyncio.create_task(device.pump())
        try:
            yield device
        finally:
            pump.cancel()


def _leads(stack: Stack) -> Any:
    async def check() -> bool:
        return bool(stack.ingest_app.state.publisher.leader)

    return check


async def _history(stack: Stack, device_id: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT kind, actor_type, shadow FROM twin_history WHERE device_id = $1 ORDER BY id",
            device_id,
        )
    finally:
        await conn.close()
    return [(row["kind"], row["actor_type"], row["shadow"]) for row in rows]


async def test_classic_shadow_get_update_delta_documents(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id, token = created["device_id"], created["provision_token"]
    async with aws_device(stack, device_id, token) as device:
        await device.request("get", {"clientToken": "g-1"})
        got = await device.expect("/shadow/get/accepted")
        assert got["clientToken"] == "g-1" and got["version"] == 0 and got["state"] == {}
        assert isinstance(got["timestamp"], int)

        # An operator's desired write reaches the device as update/delta and documents.
        patched = await stack.ui.patch(
            f"/customer/devices/{device_id}/twin/desired",
            json={"desired": {"color": "red", "fan": {"speed": 2}}},
            headers=admin,
        )
        assert patched.status_code == 200
        delta = await device.expect("/shadow/update/delta")
        assert delta["state"] == {"color": "red", "fan": {"speed": 2}}
        assert delta["version"] == 1
        assert isinstance(delta["metadata"]["fan"]["speed"]["timestamp"], int)
        documents = await device.expect("/shadow/update/documents")
        assert documents["previous"]["version"] == 0 and documents["current"]["version"] == 1
        assert documents["current"]["state"]["desired"]["color"] == "red"

        # The device reports what it applied; the delta is empty, so the twin is synced.
        await device.request(
            "update",
            {
                "state": {"reported": {"color": "red", "fan": {"speed": 2}}},
                "clientToken": "u-1",
                "version": 1,
            },
        )
        accepted = await device.expect("/shadow/update/accepted")
        assert accepted["clientToken"] == "u-1" and accepted["version"] == 2
        assert accepted["state"] == {"reported": {"color": "red", "fan": {"speed": 2}}}
        assert isinstance(accepted["metadata"]["reported"]["fan"]["speed"]["timestamp"], int)
        current = await device.expect("/shadow/update/documents")
        assert current["current"]["state"]["reported"]["color"] == "red"
        assert current["clientToken"] == "u-1"

        twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
        assert twin["reported"] == {"color": "red", "fan": {"speed": 2}}
        assert twin["reported_version"] == 1 and twin["sync_status"] == "synced"

        # 409: an update with another version; nothing is written.
        await device.request(
            "update",
            {"state": {"reported": {"color": "blue"}}, "version": 1, "clientToken": "u-2"},
        )
        conflict = await device.expect("/shadow/update/rejected")
        assert conflict["code"] == 409 and conflict["message"] == "Version conflict"
        assert conflict["clientToken"] == "u-2" and isinstance(conflict["timestamp"], int)
        # ... and recovers: get, then update with the current version.
        await device.request("get")
        assert (await device.expect("/shadow/get/accepted"))["version"] == 2
        await device.request("update", {"state": {"reported": {"color": "blue"}}, "version": 2})
        assert (await device.expect("/shadow/update/accepted"))["version"] == 3

        await device.request("get")
        got = await device.expect("/shadow/get/accepted")
        assert got["state"]["delta"] == {"color": "red"}
        assert got["metadata"]["desired"]["color"]["timestamp"] > 0

    assert await _history(stack, device_id) == [
        ("desired", "user", ""),
        ("reported", "device", ""),
        ("reported", "device", ""),
    ]


async def test_named_shadow_on_aws_topics(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id, token = created["device_id"], created["provision_token"]
    async with aws_device(stack, device_id, token) as device:
        await device.request("get", {"clientToken": "x"}, shadow="config")
        missing = await device.expect("/name/config/get/rejected")
        assert missing["code"] == 404 and missing["clientToken"] == "x"
        assert missing["message"] == "No shadow exists with name: 'config'"
        await device.request("delete", {}, shadow="config")
        assert (await device.expect("/name/config/delete/rejected"))["code"] == 404

        await device.request(
            "update", {"state": {"reported": {"mode": "eco"}}, "clientToken": "n1"}, shadow="config"
        )
        accepted = await device.expect("/name/config/update/accepted")
        assert accepted["version"] == 1 and accepted["clientToken"] == "n1"
        documents = await device.expect("/name/config/update/documents")
        assert documents["previous"] is None and documents["current"]["version"] == 1

        shadow = (
            await stack.ui.get(f"/customer/devices/{device_id}/shadows/config/twin", headers=admin)
        ).json()
        assert shadow["reported"] == {"mode": "eco"} and shadow["version"] == 1

        # The operator changes the named shadow: delta on the named topic only.
        await stack.ui.patch(
            f"/customer/devices/{device_id}/shadows/config/twin/desired",
            json={"desired": {"mode": "boost"}},
            headers=admin,
        )
        delta = await device.expect("/name/config/update/delta")
        assert delta["state"] == {"mode": "boost"} and delta["version"] == 2

        await device.request("delete", {"clientToken": "d1"}, shadow="config")
        deleted = await device.expect("/name/config/delete/accepted")
        assert deleted["version"] == 2 and deleted["clientToken"] == "d1"
        gone = await device.expect("/name/config/update/documents")
        assert gone["current"] is None and gone["previous"]["version"] == 2
    names = (await stack.ui.get(f"/customer/devices/{device_id}/shadows", headers=admin)).json()
    assert names["items"] == []
    assert ("reported", "device", "config") in await _history(stack, device_id)


BAD_REQUESTS = [
    (b"{not json", 400, "Invalid JSON"),
    (orjson.dumps({"state": "on"}), 400, "State node must be an object"),
    (orjson.dumps({"state": {"reported": {"a": 1}}, "extra": 1}), 400, "Unexpected top-level"),
    (orjson.dumps({"desired": {"a": 1}}), 400, "Missing required node: state"),
    (orjson.dumps({"state": {"reported": 5}}), 400, "Reported node must be an object"),
    (orjson.dumps({"state": {"weird": {}}}), 400, "State contains an invalid node"),
    (orjson.dumps({"state": {"reported": {}}, "version": "1"}), 400, "Invalid version"),
    (
        orjson.dumps({"state": {"reported": {"a": 1}}, "clientToken": "t" * 65}),
        400,
        "Invalid clientToken",
    ),
]


async def test_bad_requests_get_aws_errors_and_write_nothing(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id, token = created["device_id"], created["provision_token"]
    limit = stack.settings.limits.max_state_bytes
    async with aws_device(stack, device_id, token) as device:
        for raw, code, message in BAD_REQUESTS:
            await device.request("update", raw=raw)
            error = await device.expect("/shadow/update/rejected")
            assert error["code"] == code and message in error["message"], (raw, error)
            assert isinstance(error["timestamp"], int)
        # 9 bytes over the state limit: 413.
        filler = "x" * (limit - len(orjson.dumps({"b": ""})) + 9)
        await device.request("update", {"state": {"reported": {"b": filler}}, "clientToken": "big"})
        error = await device.expect("/shadow/update/rejected")
        assert error["code"] == 413 and error["clientToken"] == "big"
        # A named shadow's bad first update creates nothing.
        await device.request("update", raw=b"[]", shadow="cfg")
        assert (await device.expect("/name/cfg/update/rejected"))["code"] == 400
    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert twin["reported"] == {} and twin["reported_version"] == 0
    assert await _history(stack, device_id) == []
    names = (await stack.ui.get(f"/customer/devices/{device_id}/shadows", headers=admin)).json()
    assert names["items"] == []


async def test_another_things_topics_are_refused(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    mine = await stack.device(admin)
    victim = await stack.device(admin)
    victim_id = victim["device_id"]
    async with aws_device(stack, mine["device_id"], mine["provision_token"]) as device:
        # Subscribing to another thing's tree is refused by the broker.
        result = await device.client.subscribe(f"$aws/things/{victim_id}/shadow/#", qos=1)
        assert any(getattr(code, "value", code) >= 0x80 for code in result), result
        # Publishing on it is dropped: the victim's shadow is never written.
        await device.client.publish(
            f"$aws/things/{victim_id}/shadow/update",
            orjson.dumps({"state": {"reported": {"pwned": True}}}),
            qos=1,
        )
        # Nor may a device answer for the service.
        await device.client.publish(
            f"$aws/things/{mine['device_id']}/shadow/update/accepted", b"{}", qos=1
        )
        seen = await device.quiet(1.0)
        assert not any(topic.endswith("/update/accepted") for topic, _ in seen)
    twin = (await stack.ui.get(f"/customer/devices/{victim_id}/twin", headers=admin)).json()
    assert twin["reported"] == {}
    assert await _history(stack, victim_id) == []


@pytest.mark.parametrize("rps", [3])
async def test_requests_above_the_rate_get_429(database_url: str, broker: Any, rps: int) -> None:
    settings = dataclasses.replace(make_settings(database_url, broker.url), shadow_rps=rps)
    async with running_stack(settings, broker) as stack:
        _, admin = await stack.tenant("admin")
        created = await stack.device(admin)
        async with aws_device(stack, created["device_id"], created["provision_token"]) as device:
            started = time.monotonic()
            for n in range(rps + 2):
                await device.request("get", {"clientToken": f"r{n}"})
            sent_within = time.monotonic() - started
            seen = await device.quiet(1.5)
            accepted = [body for topic, body in seen if topic.endswith("/get/accepted")]
            rejected = [body for topic, body in seen if topic.endswith("/get/rejected")]
            assert len(accepted) + len(rejected) == rps + 2
            if sent_within < 0.5:  # all inside one second: the rate allows only rps of them
                assert len(accepted) == rps
            assert rejected and all(body["code"] == 429 for body in rejected)
            assert all(body["message"] == "Too Many Requests" for body in rejected)
            assert {body["clientToken"] for body in rejected} <= {f"r{n}" for n in range(rps + 2)}


async def test_bulk_desired_reaches_aws_devices(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id, token = created["device_id"], created["provision_token"]
    async with aws_device(stack, device_id, token) as device:
        job = await stack.ui.post(
            "/customer/fleet/desired",
            json={"filter": {"device_ids": [device_id]}, "desired": {"firmware": "2.0"}},
            headers=admin,
        )
        assert job.status_code == 202, job.text
        delta = await device.expect("/shadow/update/delta", timeout=15)
        assert delta["state"] == {"firmware": "2.0"} and delta["version"] == 1
        documents = await device.expect("/shadow/update/documents")
        assert documents["current"]["state"]["desired"] == {"firmware": "2.0"}


async def test_aws_update_reaches_the_event_stream(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id, token = created["device_id"], created["provision_token"]
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        async with aws_device(stack, device_id, token) as device:
            await device.request("update", {"state": {"reported": {"temp": 21}}})
            await device.expect("/shadow/update/accepted")
            await device.request("update", {"state": {"reported": {"on": True}}}, shadow="lamp")
            await device.expect("/name/lamp/update/accepted")
        kinds = await conn.fetch(
            "SELECT kind, shadow, reported_version FROM twin_events WHERE device_id = $1"
            " AND kind IN ('twin', 'shadow') ORDER BY id",
            device_id,
        )
        assert ("twin", "") in {(row["kind"], row["shadow"]) for row in kinds}
        assert ("shadow", "lamp") in {(row["kind"], row["shadow"]) for row in kinds}
    finally:
        await conn.close()
