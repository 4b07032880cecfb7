"""``iotcloud serve ingest`` with ``IOTCLOUD_INGEST_TLS=1``: the device HTTP API over HTTPS with
the private CA's server certificate, trusted through ``ca.pem`` and refused without it."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from tests.support import Broker, ServiceProcess, eventually


async def test_the_device_api_serves_https_that_verifies_against_ca_pem(
    tmp_path: Path, database_url: str, broker: Broker
) -> None:
    home = tmp_path / "home"
    ingest = ServiceProcess.make(
        "ingest", home=home, database_url=database_url, mqtt_url=broker.url
    )
    for name in ("IOTCLOUD_TLS_CERT", "IOTCLOUD_TLS_KEY", "IOTCLOUD_TLS_CA"):
        ingest.env.pop(name, None)
    ingest.env["IOTCLOUD_INGEST_TLS"] = "1"
    ca_pem = home / "tls" / "ca.pem"
    ingest.start()
    try:

        async def ready() -> bool:
            if ingest.process is not None and ingest.process.poll() is not None:
                raise AssertionError(f"ingest exited; see {ingest.log_path}")
            if not ca_pem.exists():
                return False
            trusting = ssl.create_default_context(cafile=str(ca_pem))
            async with httpx.AsyncClient(verify=trusting, timeout=2) as client:
                try:
                    response = await client.get(f"https://localhost:{ingest.port}/readyz")
                except httpx.TransportError:
                    return False
            return response.status_code == 200

        await eventually(ready, timeout=30, interval=0.2)

        trusting = ssl.create_default_context(cafile=str(ca_pem))
        async with httpx.AsyncClient(verify=trusting, timeout=5) as client:
            for host in ("localhost", "127.0.0.1"):
                response = await client.get(f"https://{host}:{ingest.port}/healthz")
                assert response.status_code == 200, (host, response.text)

        # The system's trust store does not hold the private CA: the handshake is refused.
        async with httpx.AsyncClient(timeout=5) as stranger:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await stranger.get(f"https://localhost:{ingest.port}/healthz")

        # Plain HTTP on the TLS port gets no answer.
        async with httpx.AsyncClient(timeout=5) as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get(f"http://127.0.0.1:{ingest.port}/healthz")
    finally:
        ingest.stop()
