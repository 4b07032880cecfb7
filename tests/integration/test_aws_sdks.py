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

import pytest

from tests.integration.aws_devices import SDKS, Endpoint, ShadowDevice
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
