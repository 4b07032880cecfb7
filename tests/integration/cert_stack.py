"""A stack whose broker also has the mutual-TLS listener for device certificates (SPEC §9),
and a device's certificate files issued through the operator API."""

from __future__ import annotations

import secrets
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.device_certs import new_device_key_and_csr
from shared.tls import TlsFiles, ensure_server_certificate
from tests.conftest import Stack, make_settings, running_stack
from tests.support import Broker, free_port


@dataclass(frozen=True)
class CertStack:
    stack: Stack
    broker: Broker
    server: TlsFiles

    @property
    def cert_port(self) -> int:
        return self.broker.cert_port


@dataclass(frozen=True)
class DeviceFiles:
    """What ``iotcloud device cert`` writes: the paths an SDK is given."""

    device_id: str
    certificate_id: str
    key: Path
    cert: Path
    ca: Path

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


@pytest.fixture
async def cert_stack(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[CertStack]:
    trust = tmp_path / "device-trust"
    monkeypatch.setenv("IOTCLOUD_DEVICE_TRUST_DIR", str(trust))
    monkeypatch.setenv("IOTCLOUD_DEVICE_CA_SECRET", secrets.token_urlsafe(24))
    server = ensure_server_certificate(tmp_path / "home")
    broker = Broker(
        tmp_path / "broker",
        free_port(),
        database_url,
        tls_port=free_port(),
        cert_port=free_port(),
        device_trust=trust,
    )
    broker.start(tls=server)
    try:
        async with running_stack(make_settings(database_url, broker.url), broker) as stack:
            yield CertStack(stack, broker, server)
    finally:
        broker.kill()


async def issue_files(
    env: CertStack, headers: dict[str, str], device_id: str, out: Path
) -> DeviceFiles:
    """A key made here, its CSR signed through ``POST .../certificates``, files on disk."""
    key_pem, csr_pem = new_device_key_and_csr(device_id)
    response = await env.stack.ui.post(
        f"/customer/devices/{device_id}/certificates", json={"csr": csr_pem}, headers=headers
    )
    assert response.status_code == 201, response.text
    body = response.json()
    out.mkdir(parents=True, exist_ok=True)
    files = DeviceFiles(
        device_id, body["certificate_id"], out / "device.key", out / "device.pem", out / "ca.pem"
    )
    files.key.write_text(key_pem)
    files.cert.write_text(body["certificate_pem"])
    assert env.server.ca is not None
    files.ca.write_text(env.server.ca.read_text())
    return files
