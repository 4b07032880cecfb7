"""Named shadows (SPEC §9) keep the classic shadow's report rules: ``seq`` deduplicates
resent reports (docs/devices.md), and a device may refuse a desired version (SPEC §11) over
native MQTT or the AWS topics; real PostgreSQL, real broker with the project's plugin."""

from __future__ import annotations

from typing import Any

import aiomqtt
import asyncpg
import orjson

from tests.conftest import Stack
from tests.integration.test_aws_shadow_topics import aws_device
from tests.integration.test_fleet_events import all_sequenced, open_stream, served
from tests.integration.test_named_shadows import _base, _next_json


async def _rows(stack: Stack, device_id: str, name: str) -> tuple[Any, list[str]]:
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        seq = await conn.fetchval(
            "SELECT reported_seq FROM device_shadows WHERE device_id = $1 AND name = $2",
            device_id,
            name,
        )
        kinds = await conn.fetch(
            "SELECT kind FROM twin_history WHERE device_id = $1 AND shadow = $2 ORDER BY id",
            device_id,
            name,
        )
    finally:
        await conn.close()
    return seq, [row["kind"] for row in kinds]


async def test_named_shadow_reports_are_deduplicated_by_seq(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id, token = created["device_id"], created["provision_token"]
    url = f"/customer/devices/{device_id}/shadows/fw/twin"
    await stack.ui.patch(url + "/desired", json={"desired": {"image": "v2"}}, headers=admin)
    async with aiomqtt.Client(
        "127.0.0.1", stack.broker.port, username=device_id, password=token, identifier=device_id
    ) as client:
        base = _base(tenant_id, device_id, "fw")
        await client.subscribe(base + "reported/+", qos=1)

        async def report(body: dict[str, Any]) -> dict[str, Any]:
            await client.publish(base + "reported", orjson.dumps(body), qos=1)
            return await _next_json(client, "/fw/reported/accepted")

        first = await report({"reported": {"image": "v2", "n": 1}, "version": 1, "seq": 5})
        assert first == {"accepted": True, "version": 1}
        # The same seq again (a resend) and an older one: acknowledged, not applied.
        again = await report({"reported": {"image": "v2", "n": 2}, "version": 1, "seq": 5})
        assert again == {"accepted": True, "version": 1, "applied": False}
        older = await report({"reported": {"n": 0}, "version": 1, "seq": 4})
        assert older == {"accepted": True, "version": 1, "applied": False}
        shadow = (await stack.ui.get(url, headers=admin)).json()
        assert shadow["reported"] == {"image": "v2", "n": 1}
        assert await _rows(stack, device_id, "fw") == (5, ["desired", "reported"])
        # A newer one applies, and a report without seq keeps the last seq.
        newer = await report({"reported": {"n": 3}, "version": 1, "seq": 6})
        assert newer == {"accepted": True, "version": 1}
        await report({"reported": {"n": 4}, "version": 1})
        assert (await stack.ui.get(url, headers=admin)).json()["reported"]["n"] == 4
        assert (await _rows(stack, device_id, "fw"))[0] == 6
        stale = await report({"reported": {"n": 5}, "version": 1, "seq": 6})
        assert stale.get("applied") is False
    assert (await stack.ui.get(url, headers=admin)).json()["reported"]["n"] == 4
    # The classic shadow's seq is its own.
    classic = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert classic["reported"] == {}


async def test_named_shadow_rejection_over_mqtt_and_aws(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id, token = created["device_id"], created["provision_token"]
    url = f"/customer/devices/{device_id}/shadows/fw/twin"
    await stack.ui.patch(url + "/desired", json={"desired": {"image": "v2"}}, headers=admin)
    await stack.ui.patch(url + "/desired", json={"desired": {"image": "v3"}}, headers=admin)
    await all_sequenced(stack)
    access = admin["Authorization"].removeprefix("Bearer ")
    async with (
        served(stack) as http,
        open_stream(http, params={"access_token": access}) as (_, stream),
        aiomqtt.Client(
            "127.0.0.1",
            stack.broker.port,
            username=device_id,
            password=token,
            identifier=device_id,
        ) as client,
    ):
        base = _base(tenant_id, device_id, "fw")
        await client.subscribe(base + "reported/+", qos=1)
        await client.publish(
            base + "reported",
            orjson.dumps({"version": 2, "rejected": {"code": 9, "message": "too big"}, "seq": 1}),
            qos=1,
        )
        assert await _next_json(client, "/fw/reported/accepted") == {
            "accepted": True,
            "version": 0,
        }
        events = await stream.events_until(
            lambda seen: any(e["data"].get("sync_status") == "rejected" for e in seen)
        )
        event = next(e for e in events if e["data"].get("sync_status") == "rejected")
        assert event["event"] == "shadow" and event["data"]["shadow"] == "fw"
        # Refusing a version above the desired one is a version refusal, as for any report.
        await client.publish(
            base + "reported",
            orjson.dumps({"version": 9, "rejected": {"code": 9, "message": "?"}}),
            qos=1,
        )
        assert (await _next_json(client, "/fw/reported/rejected"))["accepted"] is False

    shadow = (await stack.ui.get(url, headers=admin)).json()
    assert shadow["sync_status"] == "rejected"
    assert shadow["rejected"] | {"at": None} == {
        "version": 2,
        "code": 9,
        "message": "too big",
        "at": None,
    }
    summary = await stack.ui.get("/customer/fleet/summary?shadow=fw", headers=admin)
    assert summary.status_code == 200, summary.text
    counts = summary.json()
    assert (counts["total"], counts["rejected"], counts["pending"], counts["synced"]) == (
        1,
        1,
        0,
        0,
    )
    for status, expected in (("rejected", [device_id]), ("pending", []), ("synced", [])):
        listed = await stack.ui.get(
            "/customer/devices", params={"shadow": "fw", "sync_status": status}, headers=admin
        )
        assert listed.status_code == 200, listed.text
        assert [item["device_id"] for item in listed.json()["items"]] == expected, status
    listed = await stack.ui.get("/customer/devices", params={"shadow": "fw"}, headers=admin)
    assert listed.json()["items"][0]["sync_status"] == "rejected"
    history = (await stack.ui.get(url + "/history", headers=admin)).json()["items"]
    assert history[0]["kind"] == "rejected" and history[0]["patch"]["code"] == 9
    # The classic twin is not rejected, nor the tenant's summary (classic shadows only).
    classic = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert classic["rejected"] is None and classic["sync_status"] != "rejected"

    # Over the AWS topics: state.rejected refuses the named shadow's current desired version.
    async with aws_device(stack, device_id, token) as device:
        await device.request("update", {"state": {"reported": {"image": "v3"}}}, shadow="fw")
        await device.expect("/shadow/name/fw/update/accepted")
        assert (await stack.ui.get(url, headers=admin)).json()["sync_status"] == "synced"
        await stack.ui.patch(url + "/desired", json={"desired": {"image": "v4"}}, headers=admin)
        await device.request(
            "update", {"state": {"rejected": {"code": "E", "message": "no"}}}, shadow="fw"
        )
        await device.expect("/shadow/name/fw/update/accepted")
    shadow = (await stack.ui.get(url, headers=admin)).json()
    assert shadow["sync_status"] == "rejected" and shadow["rejected"]["version"] == 3
    assert shadow["rejected"]["code"] == "E"
