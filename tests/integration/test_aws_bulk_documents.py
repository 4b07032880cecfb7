"""A bulk job's ``update/documents`` on the AWS topics (SPEC §9) carry the device's real
``previous`` document, as a single write's do; real PostgreSQL, real broker."""

from __future__ import annotations

from tests.conftest import Stack
from tests.integration.test_aws_shadow_topics import aws_device


async def test_bulk_documents_carry_the_previous_document(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    devices = [await stack.device(admin) for _ in range(2)]
    first, second = (device["device_id"] for device in devices)
    await stack.ui.patch(
        f"/customer/devices/{first}/twin/desired", json={"desired": {"led": "red"}}, headers=admin
    )
    async with aws_device(stack, first, devices[0]["provision_token"]) as device:
        await device.request("update", {"state": {"reported": {"led": "red"}}})
        await device.expect("/shadow/update/accepted")
        await device.quiet(1.0)  # the operator's write's and the update's own documents
        job = await stack.ui.post(
            "/customer/fleet/desired",
            json={"filter": {"device_ids": [first, second]}, "desired": {"firmware": "2.0"}},
            headers=admin,
        )
        assert job.status_code == 202, job.text
        documents = await device.expect("/shadow/update/documents", timeout=15)
        while documents["current"]["version"] < 3:  # a late one of the writes before
            documents = await device.expect("/shadow/update/documents", timeout=15)
    previous, current = documents["previous"], documents["current"]
    assert previous is not None
    assert previous["version"] == 2 and current["version"] == 3
    assert previous["state"] == {"desired": {"led": "red"}, "reported": {"led": "red"}}
    assert current["state"]["desired"] == {"led": "red", "firmware": "2.0"}
    assert isinstance(previous["metadata"]["desired"]["led"]["timestamp"], int)
    assert "firmware" not in previous["metadata"]["desired"]
