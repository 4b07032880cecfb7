"""Delivery guarantees: reports apply once each and in order, duplicates are harmless, and
the retained desired message catches up with writes made while no publisher ran."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import orjson

from shared import db
from shared.topics import reply_topic, reported_topic
from tests.conftest import Stack
from tests.integration.test_faults import provision, retained_desired
from tests.support import Broker, ServiceProcess, eventually


async def reported_history(database_url: str, device_id: str) -> list[dict[str, object]]:
    """The device's applied reports, in the order they were applied."""
    conn = await db.connect(database_url, application_name="tests")
    try:
        rows = await conn.fetch(
            """SELECT patch FROM twin_history
               WHERE device_id = $1 AND kind = 'reported' ORDER BY id""",
            device_id,
        )
    finally:
        await conn.close()
    return [row["patch"] for row in rows]


async def test_reports_apply_once_each_in_delivery_order(stack: Stack) -> None:
    tenant_id, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id = device["device_id"]
    async with aiomqtt.Client(
        "127.0.0.1",
        stack.broker.port,
        username=device_id,
        password=device["provision_token"],
        identifier=device_id,
    ) as client:
        for counter in range(1, 101):
            await client.publish(
                reported_topic(tenant_id, device_id),
                orjson.dumps({"reported": {"counter": counter}, "version": 0}),
                qos=1,
            )

        async def all_applied() -> bool:
            return len(await reported_history(stack.settings.database_url, device_id)) >= 100

        await eventually(all_applied)
        history = await reported_history(stack.settings.database_url, device_id)
        assert history == [{"counter": counter} for counter in range(1, 101)]

        # A duplicate (same payload, same version) is accepted and changes nothing.
        await client.subscribe(reported_topic(tenant_id, device_id) + "/+", qos=1)
        before = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=headers)).json()
        await client.publish(
            reported_topic(tenant_id, device_id),
            orjson.dumps({"reported": {"counter": 100}, "version": 0, "clientToken": "dup"}),
            qos=1,
        )
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.topic.value == reply_topic(tenant_id, device_id, accepted=True)
                assert orjson.loads(message.payload) == {  # type: ignore[arg-type]
                    "accepted": True,
                    "version": 0,
                    "clientToken": "dup",
                }
                break
        after = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=headers)).json()
        for key in ("reported", "reported_version", "desired_version"):
            assert after[key] == before[key]

        # A report for a version the device cannot have is rejected, with the reason.
        await client.publish(
            reported_topic(tenant_id, device_id),
            orjson.dumps({"reported": {"counter": -1}, "version": 7, "clientToken": "bad"}),
            qos=1,
        )
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.topic.value == reply_topic(tenant_id, device_id, accepted=False)
                body = orjson.loads(message.payload)  # type: ignore[arg-type]
                assert (body["accepted"], body["version"], body["clientToken"]) == (
                    False,
                    0,
                    "bad",
                )
                assert body["error"]
                break
    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=headers)).json()
    assert twin["reported"] == {"counter": 100}


async def test_desired_written_while_no_publisher_ran_is_delivered(
    tmp_path: Path, database_url: str, broker: Broker
) -> None:
    """The service dies between commit and publish: the row stays behind and goes out later."""
    tenant_id, devices = await provision(database_url, broker.url, 3)
    ingest = ServiceProcess.make(
        "ingest", home=tmp_path / "home", database_url=database_url, mqtt_url=broker.url
    )
    conn = await db.connect(database_url, application_name="tests")
    try:
        ingest.start()
        await ingest.wait_ready()
        ingest.kill()
        for device in devices:  # committed desired writes nobody publishes
            await conn.execute(
                """UPDATE device_state
                   SET desired_state = $2, desired_version = desired_version + 1
                   WHERE device_id = $1""",
                device.device_id,
                {"written_while_down": device.device_id},
            )
        for device in devices:
            assert await retained_desired(broker.port, device) is None
        ingest.start()
        for device in devices:
            expected = {"desired": {"written_while_down": device.device_id}, "version": 1}

            async def delivered(device=device, expected=expected) -> bool:  # type: ignore[no-untyped-def]
                return await retained_desired(broker.port, device) == expected

            await eventually(delivered, timeout=20, interval=0.2)

        async def all_marked_published() -> bool:
            behind = await conn.fetchval(
                """SELECT count(*) FROM device_state
                   WHERE tenant_id = $1 AND desired_version > published_version""",
                tenant_id,
            )
            return bool(behind == 0)

        await eventually(all_marked_published)
    finally:
        ingest.kill()
        await conn.close()


async def test_an_older_state_arriving_late_is_acknowledged_but_not_applied(stack: Stack) -> None:
    """A resend or re-delivery of an older report (lower seq) after a newer one, with the
    same version, regresses nothing (docs/devices.md), over MQTT and HTTP."""
    tenant_id, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id = device["device_id"]
    async with aiomqtt.Client(
        "127.0.0.1",
        stack.broker.port,
        username=device_id,
        password=device["provision_token"],
        identifier=device_id,
    ) as client:
        await client.subscribe(reported_topic(tenant_id, device_id) + "/+", qos=1)
        for seq in (2, 1, 2):
            await client.publish(
                reported_topic(tenant_id, device_id),
                orjson.dumps(
                    {"reported": {"n": seq}, "version": 0, "clientToken": f"c{seq}", "seq": seq}
                ),
                qos=1,
            )
        replies = []
        async with asyncio.timeout(10):
            async for message in client.messages:
                replies.append((message.topic.value, orjson.loads(message.payload)))  # type: ignore[arg-type]
                if len(replies) == 3:
                    break
    accepted = reply_topic(tenant_id, device_id, accepted=True)
    assert replies == [
        (accepted, {"accepted": True, "version": 0, "clientToken": "c2"}),
        (accepted, {"accepted": True, "version": 0, "clientToken": "c1", "applied": False}),
        (accepted, {"accepted": True, "version": 0, "clientToken": "c2", "applied": False}),
    ]
    older = await stack.ingest.post(
        "/device/v1/shadow/reported",
        json={"reported": {"n": 1}, "version": 0, "seq": 1},
        headers={"X-Provision-Token": device["provision_token"]},
    )
    assert older.status_code == 200
    assert older.json() == {"accepted": True, "version": 0, "applied": False}
    newer = await stack.ingest.post(
        "/device/v1/shadow/reported",
        json={"reported": {"n": 3}, "version": 0, "seq": 3},
        headers={"X-Provision-Token": device["provision_token"]},
    )
    assert newer.json() == {"accepted": True, "version": 0}
    assert await reported_history(stack.settings.database_url, device_id) == [{"n": 2}, {"n": 3}]
    twin_doc = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=headers)).json()
    assert twin_doc["reported"] == {"n": 3}
