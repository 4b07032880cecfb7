"""The device HTTP API for named shadows (SPEC §9, docs/devices.md): the classic routes with
``name/{name}/``, same bodies and rules; a device reaches only its own shadows. Real
PostgreSQL, the real services."""

from __future__ import annotations

from tests.conftest import Stack


async def test_named_shadow_over_http(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id = created["device_id"]
    device = {"X-Provision-Token": created["provision_token"]}
    ui = f"/customer/devices/{device_id}/shadows"
    await stack.ui.patch(f"{ui}/fw/twin/desired", json={"desired": {"image": "v2"}}, headers=admin)

    got = await stack.ingest.get("/device/v1/shadow/name/fw", headers=device)
    assert (got.status_code, got.json()) == (200, {"desired": {"image": "v2"}, "version": 1})
    classic = await stack.ingest.get("/device/v1/shadow", headers=device)
    assert classic.json() == {"desired": {}, "version": 0}

    report = "/device/v1/shadow/name/fw/reported"
    ok = await stack.ingest.post(
        report, json={"reported": {"image": "v2"}, "version": 1, "seq": 3}, headers=device
    )
    assert (ok.status_code, ok.json()) == (200, {"accepted": True, "version": 1})
    again = await stack.ingest.post(
        report, json={"reported": {"image": "v1"}, "version": 1, "seq": 3}, headers=device
    )
    assert again.json() == {"accepted": True, "version": 1, "applied": False}
    shadow = (await stack.ui.get(f"{ui}/fw/twin", headers=admin)).json()
    assert shadow["reported"] == {"image": "v2"} and shadow["sync_status"] == "synced"
    history = (await stack.ui.get(f"{ui}/fw/twin/history", headers=admin)).json()["items"]
    assert (history[0]["kind"], history[0]["actor"]["type"]) == ("reported", "device")

    # The version rule, malformed bodies and limits, as on the classic route.
    ahead = await stack.ingest.post(
        report, json={"reported": {}, "version": 7, "clientToken": "c"}, headers=device
    )
    assert ahead.status_code == 409
    assert ahead.json()["accepted"] is False and ahead.json()["clientToken"] == "c"
    for bad in (b"{", b"[]", b'{"reported": 1, "version": 1}'):
        response = await stack.ingest.post(
            report, content=bad, headers={**device, "Content-Type": "application/json"}
        )
        assert response.status_code == 422, (bad, response.text)
    limit = stack.settings.limits.max_state_bytes
    huge = await stack.ingest.post(
        report, json={"reported": {"x": "y" * limit}, "version": 1}, headers=device
    )
    assert huge.status_code == 413

    # A refusal (SPEC §11) over HTTP.
    await stack.ui.patch(f"{ui}/fw/twin/desired", json={"desired": {"image": "v3"}}, headers=admin)
    refused = await stack.ingest.post(
        report, json={"version": 2, "rejected": {"code": 1, "message": "no"}}, headers=device
    )
    assert refused.json() == {"accepted": True, "version": 1}
    shadow = (await stack.ui.get(f"{ui}/fw/twin", headers=admin)).json()
    assert shadow["sync_status"] == "rejected" and shadow["rejected"]["version"] == 2

    # A first accepted report creates a shadow; a refused one creates nothing.
    new = await stack.ingest.post(
        "/device/v1/shadow/name/sensors/reported",
        json={"reported": {"t": 1}, "version": 0},
        headers=device,
    )
    assert new.status_code == 200, new.text
    ghost = await stack.ingest.post(
        "/device/v1/shadow/name/ghost/reported",
        json={"reported": {"t": 1}, "version": 5},
        headers=device,
    )
    assert ghost.status_code == 409
    names = (await stack.ui.get(ui, headers=admin)).json()["items"]
    assert [item["name"] for item in names] == ["fw", "sensors"]

    # Names by AWS's rule; a shadow that does not exist.
    assert (
        await stack.ingest.get("/device/v1/shadow/name/ghost", headers=device)
    ).status_code == 404
    for name in ("a%20b", "x" * 65, "a.b"):
        response = await stack.ingest.get(f"/device/v1/shadow/name/{name}", headers=device)
        assert response.status_code == 422, (name, response.text)
        response = await stack.ingest.post(
            f"/device/v1/shadow/name/{name}/reported",
            json={"reported": {}, "version": 0},
            headers=device,
        )
        assert response.status_code == 422, (name, response.text)


async def test_named_shadow_http_needs_the_devices_own_token(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    _, other_admin = await stack.tenant("admin")
    victim = await stack.device(admin)
    ui = f"/customer/devices/{victim['device_id']}/shadows/fw/twin"
    await stack.ui.patch(ui + "/desired", json={"desired": {"secret": 1}}, headers=admin)
    intruder = await stack.device(other_admin)
    theirs = {"X-Provision-Token": intruder["provision_token"]}

    # Another device (another tenant) sees and writes only its own shadows of that name.
    assert (await stack.ingest.get("/device/v1/shadow/name/fw", headers=theirs)).status_code == 404
    written = await stack.ingest.post(
        "/device/v1/shadow/name/fw/reported",
        json={"reported": {"secret": 2}, "version": 0},
        headers=theirs,
    )
    assert written.status_code == 200
    shadow = (await stack.ui.get(ui, headers=admin)).json()
    assert shadow["reported"] == {}
    assert (await stack.ui.get(ui, headers=other_admin)).status_code == 404

    for headers in ({}, {"X-Provision-Token": "tok-wrong"}, {"X-Provision-Token": "nope"}):
        got = await stack.ingest.get("/device/v1/shadow/name/fw", headers=headers)
        assert got.status_code == 401
        posted = await stack.ingest.post(
            "/device/v1/shadow/name/fw/reported",
            json={"reported": {}, "version": 0},
            headers=headers,
        )
        assert posted.status_code == 401

    # A deleted device's token reaches nothing.
    await stack.ui.delete(f"/customer/devices/{victim['device_id']}", headers=admin)
    gone = {"X-Provision-Token": victim["provision_token"]}
    assert (await stack.ingest.get("/device/v1/shadow/name/fw", headers=gone)).status_code == 401
