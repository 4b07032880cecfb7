"""Twin semantics through both HTTP APIs: versions, rejections, limits, atomicity."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.conftest import Stack


async def _device(stack: Stack) -> tuple[dict[str, str], str, dict[str, str]]:
    _, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    return admin, created["device_id"], {"X-Provision-Token": created["provision_token"]}


async def test_fifty_concurrent_desired_writes_are_atomic(stack: Stack) -> None:
    admin, device_id, _ = await _device(stack)
    url = f"/customer/devices/{device_id}/twin/desired"
    responses = await asyncio.gather(
        *(stack.ui.patch(url, json={"desired": {f"k{n}": n}}, headers=admin) for n in range(50))
    )
    assert [r.status_code for r in responses] == [200] * 50
    assert sorted(r.json()["desired_version"] for r in responses) == list(range(1, 51))
    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert twin["desired_version"] == 50
    assert twin["desired"] == {f"k{n}": n for n in range(50)}


async def test_merge_patch_semantics_on_desired(stack: Stack) -> None:
    admin, device_id, _ = await _device(stack)
    url = f"/customer/devices/{device_id}/twin/desired"
    await stack.ui.patch(
        url, json={"desired": {"net": {"ssid": "a", "ch": 6}, "l": [1, 2]}}, headers=admin
    )
    twin = (
        await stack.ui.patch(url, json={"desired": {"net": {"ch": None}, "l": [3]}}, headers=admin)
    ).json()
    assert twin["desired"] == {"net": {"ssid": "a"}, "l": [3]}
    assert twin["desired_version"] == 2
    assert twin["sync_status"] == "stale"  # never seen


async def test_report_version_rule_and_last_seen(stack: Stack) -> None:
    admin, device_id, device = await _device(stack)
    url = f"/customer/devices/{device_id}/twin/desired"
    for n in (1, 2, 3):
        await stack.ui.patch(url, json={"desired": {"n": n}}, headers=admin)

    before = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert before["last_seen"] is None
    shadow = await stack.ingest.get("/device/v1/shadow", headers=device)
    assert shadow.json() == {"desired": {"n": 3}, "version": 3}
    seen = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert seen["last_seen"] is not None and seen["sync_status"] == "pending"

    post = "/device/v1/shadow/reported"
    ok = await stack.ingest.post(post, json={"reported": {"n": 2}, "version": 2}, headers=device)
    assert (ok.status_code, ok.json()) == (200, {"accepted": True, "version": 2})
    again = await stack.ingest.post(
        post, json={"reported": {"extra": True}, "version": 2}, headers=device
    )
    assert again.status_code == 200  # equal version: re-delivery or state update
    stale = await stack.ingest.post(post, json={"reported": {"n": 1}, "version": 1}, headers=device)
    assert stale.status_code == 409
    assert stale.json()["accepted"] is False and stale.json()["version"] == 2
    assert "stale" in stale.json()["error"]
    unknown = await stack.ingest.post(
        post, json={"reported": {"n": 9}, "version": 4}, headers=device
    )
    assert unknown.status_code == 409 and "unknown" in unknown.json()["error"]

    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert twin["reported"] == {"n": 2, "extra": True}
    assert twin["reported_version"] == 2
    assert twin["delta"] == {"n": 3}
    done = await stack.ingest.post(post, json={"reported": {"n": 3}, "version": 3}, headers=device)
    assert done.status_code == 200
    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert (twin["sync_status"], twin["delta"]) == ("synced", {})


async def test_device_api_rejects_bad_input(stack: Stack) -> None:
    admin, device_id, device = await _device(stack)
    post = "/device/v1/shadow/reported"
    for body in (
        b"not json",
        b"[1, 2]",
        b'{"reported": [], "version": 0}',
        b'{"reported": {}, "version": "0"}',
        b'{"reported": {}, "version": true}',
        b'{"reported": {}, "version": -1}',
        b'{"reported": {}}',
        b'{"reported": {}, "version": 0, "clientToken": 5}',
        b"",
    ):
        response = await stack.ingest.post(
            post, content=body, headers={**device, "Content-Type": "application/json"}
        )
        assert response.status_code == 422, body
        assert "detail" in response.json()
    deep: dict[str, object] = {}
    node = deep
    for _ in range(20):
        node["d"] = {}
        node = node["d"]  # type: ignore[assignment]
    too_deep = await stack.ingest.post(post, json={"reported": deep, "version": 0}, headers=device)
    assert too_deep.status_code == 422 and "nested" in too_deep.json()["detail"]
    big = await stack.ingest.post(
        post, json={"reported": {"blob": "x" * 70_000}, "version": 0}, headers=device
    )
    assert big.status_code == 413
    huge = await stack.ingest.post(
        post, content=b'{"reported": {"b": "' + b"x" * 300_000 + b'"}}', headers=device
    )
    assert huge.status_code == 413
    for token in ({}, {"X-Provision-Token": "tok-unknown"}, {"X-Provision-Token": "garbage"}):
        assert (await stack.ingest.get("/device/v1/shadow", headers=token)).status_code == 401
        unauthorised = await stack.ingest.post(
            post, json={"reported": {}, "version": 0}, headers=token
        )
        assert unauthorised.status_code == 401
        expected = "invalid provision token" if token else "missing X-Provision-Token header"
        assert unauthorised.json() == {"detail": expected}
    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert twin["reported"] == {} and twin["reported_version"] == 0


async def test_operator_api_rejects_bad_desired(stack: Stack) -> None:
    admin, device_id, _ = await _device(stack)
    url = f"/customer/devices/{device_id}/twin/desired"
    for body in (b"{", b"[]", b'{"desired": 5}', b'{"desired": []}', b'{"other": {}}', b""):
        response = await stack.ui.patch(
            url, content=body, headers={**admin, "Content-Type": "application/json"}
        )
        assert response.status_code == 422, body
    big = await stack.ui.patch(url, json={"desired": {"b": "x" * 70_000}}, headers=admin)
    assert big.status_code == 413
    # Two patches under the limit whose merge is over it: the merged document is checked.
    half = {"desired": {"a": "x" * 40_000}}
    assert (await stack.ui.patch(url, json=half, headers=admin)).status_code == 200
    over = await stack.ui.patch(url, json={"desired": {"b": "y" * 40_000}}, headers=admin)
    assert over.status_code == 413
    deep: dict[str, object] = {}
    node = deep
    for _ in range(16):
        node["d"] = {}
        node = node["d"]  # type: ignore[assignment]
    assert (await stack.ui.patch(url, json={"desired": deep}, headers=admin)).status_code == 422
    assert (await stack.ui.patch(url, json={"desired": {}}, headers=admin)).status_code == 200
    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert twin["desired_version"] == 2  # only the two accepted writes counted
    assert (
        await stack.ui.patch(
            url, json={"desired": {"x": 1}}, headers={**admin, "If-Match": "nonsense"}
        )
    ).status_code == 412


async def test_device_state_row_matches_the_api(stack: Stack) -> None:
    admin, device_id, _ = await _device(stack)
    await stack.ui.patch(
        f"/customer/devices/{device_id}/twin/desired", json={"desired": {"a": 1.5}}, headers=admin
    )
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT desired_version, desired_state::text FROM device_state WHERE device_id = $1",
            device_id,
        )
    finally:
        await conn.close()
    assert row["desired_version"] == 1 and row["desired_state"] == '{"a": 1.5}'
