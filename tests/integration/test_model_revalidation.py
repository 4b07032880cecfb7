"""A model's schema change is checked against its devices by a background job with
progress, not inside the request (issue #15)."""

from __future__ import annotations

import time

from tests.conftest import Stack
from tests.integration.test_twin_extensions import _revalidated


async def test_a_large_model_change_is_checked_in_the_background(stack: Stack) -> None:
    _tenant, admin = await stack.tenant("admin")
    _other, other_admin = await stack.tenant("admin")
    created = await stack.ui.post(
        "/customer/models",
        json={"model_id": "big", "desired_schema": {"type": "object"}},
        headers=admin,
    )
    assert created.status_code == 201
    batch = await stack.ui.post(
        "/customer/devices/batch",
        json={"devices": [{"device_id": f"big-{n:04d}", "model_id": "big"} for n in range(450)]},
        headers=admin,
    )
    assert batch.status_code == 201, batch.text
    other_device = await stack.device(other_admin)

    strict = {"type": "object", "required": ["interval_s"]}
    started = time.monotonic()
    queued = await stack.ui.put(
        "/customer/models/big", json={"desired_schema": strict}, headers=admin
    )
    assert time.monotonic() - started < 1.0  # answered before any device is checked
    assert queued.status_code == 202, queued.text
    job = queued.json()
    assert (job["status"], job["total"], job["checked"]) == ("running", 450, 0)
    # Another tenant's requests go on meanwhile.
    read = await stack.ui.get(
        f"/customer/devices/{other_device['device_id']}/twin", headers=other_admin
    )
    assert read.status_code == 200

    done = await _revalidated(stack, admin, "big", job["job_id"])
    assert (done["status"], done["checked"], done["invalid_count"]) == ("refused", 450, 450)
    assert [d["device_id"] for d in done["devices"]] == [f"big-{n:04d}" for n in range(5)]
    assert done["devices"][0]["errors"][0]["rule"] == "required"
    model = (await stack.ui.get("/customer/models/big", headers=admin)).json()
    assert model["desired_schema"] == {"type": "object"}

    # A change every device passes is applied; the job is the tenant's alone.
    loose = {"type": "object", "maxProperties": 10}
    queued = await stack.ui.put(
        "/customer/models/big", json={"desired_schema": loose}, headers=admin
    )
    done = await _revalidated(stack, admin, "big", queued.json()["job_id"])
    assert (done["status"], done["checked"], done["invalid_count"]) == ("applied", 450, 0)
    assert (await stack.ui.get("/customer/models/big", headers=admin)).json()[
        "desired_schema"
    ] == loose
    url = f"/customer/models/big/revalidations/{queued.json()['job_id']}"
    assert (await stack.ui.get(url, headers=other_admin)).status_code == 404
    assert (
        await stack.ui.get("/customer/models/big/revalidations/not-a-uuid", headers=admin)
    ).status_code == 404
    audit = (await stack.ui.get("/customer/audit?action=model.", headers=admin)).json()["items"]
    assert [entry["action"] for entry in audit] == ["model.update", "model.update", "model.create"]
