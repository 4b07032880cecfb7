"""The AWS SDK flows of test_aws_sdks.py against ``iotcloud up`` as a user runs it: the
operator and the device set up with the CLI (tenant, admin, token, device, ``iotcloud device
cert``), the device on each real SDK with only endpoint, port and certificate paths."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.integration.aws_devices import SDKS, Endpoint
from tests.integration.cert_stack import DeviceFiles
from tests.integration.test_aws_sdks import shadow_flows
from tests.integration.test_cli import run
from tests.integration.test_supervisor import Up, start_up, stop_after
from tests.support import eventually, free_port

__all__ = ["stop_after"]


@pytest.mark.parametrize("sdk", list(SDKS))
async def test_the_sdk_flows_against_iotcloud_up(
    tmp_path: Path, database_url: str, stop_after: list[Up], sdk: str
) -> None:
    cert_port = free_port()
    up = start_up(tmp_path, database_url, IOTCLOUD_BROKER_CERT_PORT=str(cert_port))
    stop_after.append(up)
    await eventually(up.ready, timeout=60, interval=0.5)

    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"IOTCLOUD_DEVICE_CA_SECRET", "IOTCLOUD_DEVICE_TRUST_DIR", "MQTT_URL"}
    }
    env |= {"DATABASE_URL": database_url, "IOTCLOUD_HOME": str(up.home)}
    device_id = f"thing-{sdk}"
    out = tmp_path / "device"
    admin = ["--email", "ops@acme.test", "--password", "a-long-enough-password"]
    for args in (
        ["tenant", "create", "acme"],
        ["user", "create", "--tenant", "acme", *admin, "--role", "admin"],
        ["device", "create", "--tenant", "acme", "--id", device_id],
        ["device", "cert", "--tenant", "acme", "--device", device_id, "--out", str(out)],
    ):
        done = run(env, *args)
        assert done.returncode == 0, (args, done.stderr)
    token = run(env, "token", "--email", "ops@acme.test")
    assert token.returncode == 0, token.stderr
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}

    cert = x509.load_pem_x509_certificate((out / "device.pem").read_bytes())
    files = DeviceFiles(
        device_id,
        cert.fingerprint(hashes.SHA256()).hex(),
        out / "device.key",
        out / "device.pem",
        out / "ca.pem",
    )
    device = SDKS[sdk](Endpoint(cert_port, files))
    await device.connect()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{up.ui_port}", timeout=10) as ui:
            await shadow_flows(device, device_id, ui, headers)
    finally:
        await device.close()
