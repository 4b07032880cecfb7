"""Device rejection (SPEC §11): a report refusing a desired version, over HTTP and MQTT, seen
in the twin, history, the fleet summary, ``?sync_status=rejected`` and the event stream."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
import orjson

from iotcloud.simulator import RejectRule, simulate
from shared.topics import reported_topic
from tests.conftest import Stack
from tests.integration.test_fleet_events import all_sequenced, open_stream, served
from tests.integration.test_twin_mqtt_cycle import _next_json
from tests.support import eventually

REPORT = "/device/v1/shadow/reported"


async def _twin(stack: Stack, admin: dict[str, str], device_id: str) -> dict:  # type: ignore[type-arg]
    response = await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_http_rejection_surfaces_everywhere_until_a_later_version_applies(
    stack: Stack,
) -> None:
    tenant, admin = await stack.tenant("admin")
    other, admin_other = await stack.tenant("admin")
    created = await stack.device(admin, device_id="rj-1")
    await stack.device(admin, device_id="rj-2")
    await stack.device(admin_other, device_id="rj-o")
    device = {"X-Provision-Token": created["provision_token"]}
    url = "/customer/devices/rj-1/twin/desired"
    await stack.ui.patch(url, json={"desired": {"fw": "1.0"}}, headers=admin)
    ok = await stack.ingest.post(
        REPORT, json={"reported": {"fw": "1.0"}, "version": 1}, headers=device
    )
    assert ok.status_code == 200, ok.text
    await stack.ui.patch(url, json={"desired": {"fw": "9.9"}}, headers=admin)
    await all_sequenced(stack)

    token = admin["Authorization"].removeprefix("Bearer ")
    async with (
        served(stack) as client,
        open_stream(client, params={"access_token": token}) as (_, stream),
    ):
        refused = await stack.ingest.post(
            REPORT,
            json={
                "version": 2,
                "rejected": {"code": "E_FLASH", "message": "image does not fit"},
                "reported": {"health": "ok"},
            },
            headers=device,
        )
        assert (refused.status_code, refused.json()) == (200, {"accepted": True, "version": 1})
        events = await stream.events_until(
            lambda seen: any(e["data"].get("sync_status") == "rejected" for e in seen)
        )
        event = next(e for e in events if e["data"].get("sync_status") == "rejected")
        assert event["event"] == "twin" and event["data"]["device_id"] == "rj-1"

    twin = await _twin(stack, admin, "rj-1")
    assert twin["sync_status"] == "rejected"
    assert twin["reported_version"] == 1 and twin["desired_version"] == 2
    assert twin["reported"] == {"fw": "1.0", "health": "ok"}
    assert twin["rejected"] | {"at": None} == {
        "version": 2,
        "code": "E_FLASH",
        "message": "image does not fit",
        "at": None,
    }
    history = (await stack.ui.get("/customer/devices/rj-1/twin/history", headers=admin)).json()
    newest = history["items"][0]
    assert newest["kind"] == "rejected" and newest["actor"] == {"type": "device"}
    assert newest["version"] == 2
    assert newest["patch"] == {
        "code": "E_FLASH",
        "message": "image does not fit",
        "reported": {"health": "ok"},
    }

    summary = (await stack.ui.get("/customer/fleet/summary", headers=admin)).json()
    assert summary["rejected"] == 1 and summary["pending"] == 0, summary
    assert summary["total"] == 2
    listed = (
        await stack.ui.get("/customer/devices", params={"sync_status": "rejected"}, headers=admin)
    ).json()
    assert [item["device_id"] for item in listed["items"]] == ["rj-1"]
    assert listed["items"][0]["sync_status"] == "rejected"
    pending = (
        await stack.ui.get("/customer/devices", params={"sync_status": "pending"}, headers=admin)
    ).json()
    assert pending["items"] == []
    # Another tenant sees none of it.
    theirs = (await stack.ui.get("/customer/fleet/summary", headers=admin_other)).json()
    assert theirs["rejected"] == 0
    assert tenant != other

    # Rejecting an applied version, or an unknown one, is refused; bad rejection objects too.
    for body, status in (
        ({"version": 1, "rejected": {"code": 1, "message": "x"}}, 409),
        ({"version": 7, "rejected": {"code": 1, "message": "x"}}, 409),
        ({"version": 2, "rejected": {"code": True, "message": "x"}}, 422),
        ({"version": 2, "rejected": {"code": 1, "message": 5}}, 422),
        ({"version": 2, "rejected": "no"}, 422),
        ({"version": 2, "rejected": {"code": 1, "extra": 1}}, 422),
    ):
        response = await stack.ingest.post(REPORT, json=body, headers=device)
        assert response.status_code == status, (body, response.text)

    # Still rejected after a further desired write, until the device applies a later version.
    await stack.ui.patch(url, json={"desired": {"fw": "1.1"}}, headers=admin)
    assert (await _twin(stack, admin, "rj-1"))["sync_status"] == "rejected"
    applied = await stack.ingest.post(
        REPORT, json={"reported": {"fw": "1.1"}, "version": 3}, headers=device
    )
    assert applied.status_code == 200, applied.text
    twin = await _twin(stack, admin, "rj-1")
    assert twin["sync_status"] == "synced" and twin["rejected"] is None
    summary = (await stack.ui.get("/customer/fleet/summary", headers=admin)).json()
    assert summary["rejected"] == 0


async def test_mqtt_rejection(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    created = await stack.device(admin, device_id="rj-m")
    token = created["provision_token"]
    await stack.ui.patch(
        "/customer/devices/rj-m/twin/desired", json={"desired": {"mode": "turbo"}}, headers=admin
    )
    topic = reported_topic(tenant_id, "rj-m")
    async with aiomqtt.Client(
        "127.0.0.1", stack.broker.port, username="rj-m", password=token, identifier="rj-m"
    ) as client:
        await client.subscribe(topic + "/+", qos=1)
        body = {"version": 1, "rejected": {"code": 415, "message": "no turbo"}, "clientToken": "c"}
        await client.publish(topic, orjson.dumps(body), qos=1)
        assert await _next_json(client, "/reported/accepted") == {
            "accepted": True,
            "version": 0,
            "clientToken": "c",
        }
    twin = await _twin(stack, admin, "rj-m")
    assert twin["sync_status"] == "rejected"
    assert twin["rejected"]["code"] == 415 and twin["rejected"]["message"] == "no turbo"


async def test_simulator_told_to_reject_a_key(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    devices = asyncio.create_task(
        simulate(
            stack.settings.database_url,
            stack.broker.url,
            tenant_id=tenant_id,
            count=2,
            rate=0,
            http_url=None,
            duration=0,
            prefix="sim",
            progress_every=60,
            reject=RejectRule.parse('fw="9.9"'),
        )
    )
    try:

        async def connected() -> bool:
            for device_id in ("sim-00001", "sim-00002"):
                response = await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)
                if response.status_code != 200 or not response.json()["connected"]:
                    return False
            return True

        await eventually(connected, timeout=30, interval=0.1)

        async def status(device_id: str, wanted: str) -> dict | None:  # type: ignore[type-arg]
            twin = await _twin(stack, admin, device_id)
            return twin if twin["sync_status"] == wanted else None

        for device_id, fw in (("sim-00001", "9.9"), ("sim-00002", "1.0")):
            await stack.ui.patch(
                f"/customer/devices/{device_id}/twin/desired",
                json={"desired": {"fw": fw}},
                headers=admin,
            )
        refused = await eventually(lambda: status("sim-00001", "rejected"), timeout=20)
        assert refused["rejected"]["version"] == 1 and "fw" in refused["rejected"]["message"]
        assert refused["reported"] == {}
        await eventually(lambda: status("sim-00002", "synced"), timeout=20)
        # A later version the device accepts ends the refusal.
        await stack.ui.patch(
            "/customer/devices/sim-00001/twin/desired",
            json={"desired": {"fw": "1.0"}},
            headers=admin,
        )
        applied = await eventually(lambda: status("sim-00001", "synced"), timeout=20)
        assert applied["rejected"] is None and applied["reported"] == {"fw": "1.0"}
    finally:
        devices.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await devices
