"""``iotcloud up`` as a user runs it, with a device on the real AWS SDK: ``iotcloud device
cert`` writes its files, and the device reaches its shadow over the certificate port."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from iotcloud import cli
from tests.integration.aws_devices import Endpoint, Mqtt3Device
from tests.integration.cert_stack import DeviceFiles
from tests.integration.test_supervisor import Up, make_device, start_up, stop_after
from tests.support import eventually, free_port

__all__ = ["stop_after"]


async def test_a_device_with_a_cli_certificate_reaches_its_shadow_through_iotcloud_up(
    tmp_path: Path,
    database_url: str,
    stop_after: list[Up],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert_port = free_port()
    up = start_up(tmp_path, database_url, IOTCLOUD_BROKER_CERT_PORT=str(cert_port))
    stop_after.append(up)
    await eventually(up.ready, timeout=60, interval=0.5)
    device = await make_device(database_url, up)

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("IOTCLOUD_HOME", str(up.home))
    for name in ("IOTCLOUD_DEVICE_CA_SECRET", "IOTCLOUD_DEVICE_TRUST_DIR"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "device"
    argv = ["device", "cert", "--tenant", "sup", "--device", device.device_id, "--out", str(out)]
    args = cli.build_parser().parse_args(argv)
    await args.handler(args)
    cert = x509.load_pem_x509_certificate((out / "device.pem").read_bytes())
    files = DeviceFiles(
        device.device_id,
        cert.fingerprint(hashes.SHA256()).hex(),
        out / "device.key",
        out / "device.pem",
        out / "ca.pem",
    )

    sdk_device = Mqtt3Device(Endpoint(cert_port, files))
    await sdk_device.connect()
    try:
        updated = await sdk_device.update(reported={"temperature": 21})
        got = await sdk_device.get()
        assert got["state"]["reported"] == {"temperature": 21}
        assert got["version"] == updated["version"]
    finally:
        await sdk_device.close()
