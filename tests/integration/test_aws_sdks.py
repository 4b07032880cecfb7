"""Devices on the real AWS IoT Device SDKs (SPEC §9), unchanged but for endpoint, port and
certificate paths: the v2 SDK's MQTT 3 ``IotShadowClient`` and MQTT 5
``IotShadowClientV2``, and the v1 SDK's ``AWSIoTMQTTShadowClient``. Each logs in over mutual
TLS with a certificate the operator API issued, then runs the flows a fleet moving from AWS
relies on."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.aws_devices import SDKS, Endpoint, Rejected, ShadowDevice
from tests.integration.cert_stack import CertStack, cert_stack, issue_files
from tests.support import eventually

__all__ = ["cert_stack"]

pytestmark = pytest.mark.parametrize("sdk", list(SDKS))


async def start(
    env: CertStack, tmp_path: Path, sdk: str
) -> tuple[ShadowDevice, str, dict[str, str]]:
    _, headers = await env.stack.tenant("admin")
    device_id = (await env.stack.device(headers, device_id=f"thing-{sdk}"))["device_id"]
    files = await issue_files(env, headers, device_id, tmp_path / "certs")
    device = SDKS[sdk](Endpoint(env.cert_port, files))
    await device.connect()
    return device, device_id, headers


async def twin(env: CertStack, headers: dict[str, str], device_id: str) -> dict[str, Any]:
    response = await env.stack.ui.get(f"/customer/devices/{device_id}/twin", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_connects_over_mutual_tls_and_is_confined_to_its_own_thing(
    cert_stack: CertStack, tmp_path: Path, sdk: str
) -> None:
    device, device_id, headers = await start(cert_stack, tmp_path, sdk)
    try:

        async def present() -> bool:
            return bool((await twin(cert_stack, headers, device_id)).get("connected"))

        await eventually(present, timeout=10, interval=0.2)
        subscribe_raw = getattr(device, "subscribe_raw", None)
        if subscribe_raw is not None:
            assert not await subscribe_raw("$aws/things/someone-else/shadow/update/delta")
            assert await subscribe_raw(f"$aws/things/{device_id}/shadow/update/documents")
    finally:
        await device.close()


async def test_a_revoked_certificate_is_cut_at_once_and_refused_after(
    cert_stack: CertStack, tmp_path: Path, sdk: str
) -> None:
    device, device_id, headers = await start(cert_stack, tmp_path, sdk)
    files = device.endpoint.files
    try:
        revoked = await cert_stack.stack.ui.delete(
            f"/customer/devices/{device_id}/certificates/{files.certificate_id}", headers=headers
        )
        assert revoked.status_code == 204
        await asyncio.wait_for(device.interrupted.wait(), 3)
        again = SDKS[sdk](device.endpoint)
        try:
            with pytest.raises(Exception):  # noqa: B017 - each SDK has its own error type
                await again.connect()
        finally:
            with contextlib.suppress(Exception):
                await again.close()
    finally:
        await device.close()


async def test_get_delta_report_conflict_and_named_shadow(
    cert_stack: CertStack, tmp_path: Path, sdk: str
) -> None:
    device, device_id, headers = await start(cert_stack, tmp_path, sdk)
    try:
        await shadow_flows(device, device_id, cert_stack.stack.ui, headers)
    finally:
        await device.close()


async def shadow_flows(
    device: ShadowDevice, device_id: str, ui: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """What a fleet moving from AWS relies on, against the operator API at ``ui``."""

    async def twin() -> dict[str, Any]:
        response = await ui.get(f"/customer/devices/{device_id}/twin", headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    desired_path = f"/customer/devices/{device_id}/twin/desired"
    # The operator's desired state is there at the device's first get.
    patched = await ui.patch(
        desired_path, json={"desired": {"led": "on", "rate": 5}}, headers=headers
    )
    assert patched.status_code == 200, patched.text
    got = await device.get()
    assert got["state"]["desired"] == {"led": "on", "rate": 5}
    assert got["state"]["delta"] == {"led": "on", "rate": 5}

    # Operator changes reach the device as deltas, in order (it was subscribed before the
    # first one).
    first = await asyncio.wait_for(device.deltas.get(), 10)
    assert first["state"] == {"led": "on", "rate": 5}, first
    patched = await ui.patch(desired_path, json={"desired": {"rate": 10}}, headers=headers)
    assert patched.status_code == 200
    delta = await asyncio.wait_for(device.deltas.get(), 10)
    assert delta["state"].get("rate") == 10, delta
    assert delta["version"] > first["version"]

    # The device applies it and reports: the twin turns synced.
    updated = await device.update(reported={"led": "on", "rate": 10})
    assert updated["state"]["reported"] == {"led": "on", "rate": 10}
    state = await twin()
    assert state["reported"] == {"led": "on", "rate": 10}
    assert state["sync_status"] == "synced", state
    after = await device.get()
    assert "delta" not in after["state"]
    assert after["version"] == updated["version"]

    # An update with a stale version is a 409; the device reads the version and retries.
    with pytest.raises(Rejected) as conflict:
        await device.update(reported={"firmware": "1.1"}, version=after["version"] - 1)
    assert conflict.value.code == 409
    assert (await twin())["reported"].get("firmware") is None
    current = (await device.get())["version"]
    retried = await device.update(reported={"firmware": "1.1"}, version=current)
    assert retried["version"] == current + 1

    # A named shadow: made by its first update, read, deleted, then gone (404).
    made = await device.update("config", reported={"mode": "eco"})
    assert made["state"]["reported"] == {"mode": "eco"}
    named = await device.get("config")
    assert named["state"]["reported"] == {"mode": "eco"}
    assert "desired" not in named["state"]
    # The classic shadow did not change.
    assert (await twin())["reported"].get("mode") is None
    await device.delete("config")
    with pytest.raises(Rejected) as missing:
        await device.get("config")
    assert missing.value.code == 404
