"""The user's acceptance script (seed steps 1-8) reproduced against the real stack."""

from __future__ import annotations

import asyncio

import aiomqtt
import asyncpg
import orjson

from shared.topics import desired_topic
from tests.conftest import Stack
from tests.support import eventually


async def test_seed_steps_1_to_8(stack: Stack) -> None:
    tenant_id, headers = await stack.tenant("admin")
    created = await stack.device(headers, name="boiler")
    device_id, token = created["device_id"], created["provision_token"]

    # Step 1: the migration's five columns and the pending index.
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        columns = await conn.fetch(
            """SELECT column_name FROM information_schema.columns
               WHERE table_name = 'device_state'
               AND column_name IN ('desired_state','reported_state','desired_version',
                                   'reported_version','shadow_updated_at')
               ORDER BY column_name"""
        )
        assert len(columns) == 5
        index = await conn.fetch(
            """SELECT indexname FROM pg_indexes WHERE tablename = 'device_state'
               AND indexname = 'idx_device_state_shadow_pending'"""
        )
        assert len(index) == 1
        assert await conn.fetchval("SELECT device_id FROM device_state LIMIT 1") == device_id
    finally:
        await conn.close()

    # Step 3: GET twin.
    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=headers)).json()
    for key in (
        "desired",
        "reported",
        "delta",
        "desired_version",
        "reported_version",
        "sync_status",
    ):
        assert key in twin
    assert twin["desired_version"] == 0

    # Step 4: PATCH desired increments the version.
    desired = {"reporting_interval_s": 30, "alert_temp_threshold": 45}
    patched = await stack.ui.patch(
        f"/customer/devices/{device_id}/twin/desired", json={"desired": desired}, headers=headers
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["desired_version"] == 1
    assert patched.json()["desired"] == desired

    # Step 5: the retained message is on the broker, readable with the device's own login.
    # (Wait until it is out: a subscriber already there would get it live, without the flag.)
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        await eventually(
            lambda: conn.fetchval(
                "SELECT published_version = 1 FROM device_state WHERE device_id = $1", device_id
            )
        )
    finally:
        await conn.close()
    async with aiomqtt.Client(
        "127.0.0.1", stack.broker.port, username=device_id, password=token, identifier=device_id
    ) as client:
        await client.subscribe(desired_topic(tenant_id, device_id), qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                body = orjson.loads(message.payload)  # type: ignore[arg-type]
                if body["version"] == 1:
                    assert message.retain
                    assert body == {"desired": desired, "version": 1}
                    break

    # Step 6: device HTTP pull.
    device_headers = {"X-Provision-Token": token}
    shadow = await stack.ingest.get("/device/v1/shadow", headers=device_headers)
    assert shadow.json() == {"desired": desired, "version": 1}

    # Step 7: device HTTP report, then the twin is synced.
    report = await stack.ingest.post(
        "/device/v1/shadow/reported",
        json={"reported": desired, "version": 1},
        headers=device_headers,
    )
    assert report.status_code == 200
    assert report.json() == {"accepted": True, "version": 1}
    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=headers)).json()
    assert (twin["sync_status"], twin["reported_version"]) == ("synced", 1)
    assert twin["delta"] == {}

    # Step 8: a new desired value shows in the delta.
    await stack.ui.patch(
        f"/customer/devices/{device_id}/twin/desired",
        json={"desired": {"reporting_interval_s": 60}},
        headers=headers,
    )
    delta = (
        await stack.ui.get(f"/customer/devices/{device_id}/twin/delta", headers=headers)
    ).json()
    assert delta["delta"] == {"reporting_interval_s": 60}
    assert delta["in_sync"] is False
    assert delta["sync_status"] == "pending"
