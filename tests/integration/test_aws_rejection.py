"""Device rejection (SPEC §11) over the AWS shadow topics: an update with
``state.rejected`` refuses the classic shadow's current desired version; the twin, history,
fleet summary and event stream show it, and bad rejections write nothing."""

from __future__ import annotations

import asyncpg

from tests.conftest import Stack
from tests.integration.test_aws_shadow_topics import _history, aws_device
from tests.integration.test_fleet_events import all_sequenced, open_stream, served


async def test_aws_update_rejects_the_current_desired_version(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    _, admin_other = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id, token = created["device_id"], created["provision_token"]
    url = f"/customer/devices/{device_id}/twin/desired"
    async with aws_device(stack, device_id, token) as device:
        await stack.ui.patch(url, json={"desired": {"fw": "1.0"}}, headers=admin)
        await device.request("update", {"state": {"reported": {"fw": "1.0"}}})
        assert (await device.expect("/shadow/update/accepted"))["state"]["reported"]
        await stack.ui.patch(url, json={"desired": {"fw": "9.9"}}, headers=admin)
        await all_sequenced(stack)

        access = admin["Authorization"].removeprefix("Bearer ")
        async with (
            served(stack) as client,
            open_stream(client, params={"access_token": access}) as (_, stream),
        ):
            await device.request(
                "update",
                {
                    "state": {
                        "reported": {"health": "ok"},
                        "rejected": {"code": "E_FLASH", "message": "image does not fit"},
                    },
                    "clientToken": "rj",
                },
            )
            accepted = await device.expect("/shadow/update/accepted")
            assert accepted["clientToken"] == "rj"
            assert accepted["state"] == {
                "reported": {"health": "ok"},
                "rejected": {"code": "E_FLASH", "message": "image does not fit"},
            }
            events = await stream.events_until(
                lambda seen: any(e["data"].get("sync_status") == "rejected" for e in seen)
            )
            event = next(e for e in events if e["data"].get("sync_status") == "rejected")
            assert event["event"] == "twin" and event["data"]["device_id"] == device_id

        twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
        assert twin["sync_status"] == "rejected"
        assert twin["desired_version"] == 2 and twin["reported_version"] == 1
        assert twin["reported"] == {"fw": "1.0", "health": "ok"}
        assert twin["rejected"] | {"at": None} == {
            "version": 2,
            "code": "E_FLASH",
            "message": "image does not fit",
            "at": None,
        }
        history = (
            await stack.ui.get(f"/customer/devices/{device_id}/twin/history", headers=admin)
        ).json()
        newest = history["items"][0]
        assert newest["kind"] == "rejected" and newest["actor"] == {"type": "device"}
        assert newest["version"] == 2
        summary = (await stack.ui.get("/customer/fleet/summary", headers=admin)).json()
        assert summary["rejected"] == 1, summary
        theirs = (await stack.ui.get("/customer/fleet/summary", headers=admin_other)).json()
        assert theirs["rejected"] == 0

        # Malformed rejections and a stale document version write nothing.
        before = await _history(stack, device_id)
        await device.request(
            "update", {"state": {"rejected": {"code": 7, "message": "x"}, "desired": {"a": 1}}}
        )
        refused = await device.expect("/shadow/update/rejected")
        assert refused["code"] == 400
        await device.request("update", {"state": {"rejected": {"code": True}}})
        assert (await device.expect("/shadow/update/rejected"))["code"] == 400
        await device.request("update", {"state": {"rejected": "no"}})
        assert (await device.expect("/shadow/update/rejected"))["code"] == 400
        await device.request(
            "update", {"state": {"rejected": {"code": 7, "message": "y"}}, "version": 1}
        )
        assert (await device.expect("/shadow/update/rejected"))["code"] == 409
        assert await _history(stack, device_id) == before

        # A named shadow that does not exist has no desired version to refuse: 409, and it
        # is not created.
        await device.request(
            "update", {"state": {"rejected": {"code": 7, "message": "n"}}}, shadow="cfg"
        )
        assert (await device.expect("/shadow/name/cfg/update/rejected"))["code"] == 409

        conn = await asyncpg.connect(stack.settings.database_url)
        try:
            named = "SELECT count(*) FROM device_shadows WHERE device_id = $1"
            assert await conn.fetchval(named, device_id) == 0
        finally:
            await conn.close()

        # Applying the desired version ends the rejection.
        await device.request("update", {"state": {"reported": {"fw": "9.9"}}})
        await device.expect("/shadow/update/accepted")
        twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
        assert twin["sync_status"] == "synced" and twin["rejected"] is None
        # With nothing newer than what it applied, there is nothing to refuse: 409.
        await device.request("update", {"state": {"rejected": {"code": 1, "message": "z"}}})
        assert (await device.expect("/shadow/update/rejected"))["code"] == 409
        await stack.ui.patch(url, json={"desired": {"fw": "10"}}, headers=admin)
        await device.request("update", {"state": {"rejected": {"code": 1, "message": "z"}}})
        await device.expect("/shadow/update/accepted")
        twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
        assert twin["rejected"]["version"] == 3 and twin["sync_status"] == "rejected"
