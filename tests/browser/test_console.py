"""The console in headless Chromium against the real running stack (frontend/e2e)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared import db
from shared.repositories import tenants, users
from shared.security import hash_password
from tests.support import ROOT, Broker, free_port

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    (not Path(CHROMIUM).exists() or shutil.which("npm") is None) and not os.environ.get("CI"),
    reason="needs Debian's chromium and npm (.ci/run installs chromium)",
)


def _wait_ready(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready within {timeout}s")


@pytest.fixture
def services(database_url: str, broker: Broker, tmp_path: Path) -> Iterator[dict[str, str]]:
    ui_port, ingest_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MQTT_URL": broker.url,
        "IOTCLOUD_JWT_SECRET": "browser-test-secret-" + "x" * 32,
        "UI_PORT": str(ui_port),
        "INGEST_PORT": str(ingest_port),
        "IOTCLOUD_REPLICA": f"browser-{ingest_port}",
    }
    log = (tmp_path / "services.log").open("ab")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "iotcloud.cli", "serve", service],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        for service in ("ui", "ingest")
    ]
    try:
        _wait_ready(f"http://127.0.0.1:{ui_port}/readyz")
        _wait_ready(f"http://127.0.0.1:{ingest_port}/readyz")
        yield {"ui": f"http://127.0.0.1:{ui_port}", "broker_port": str(broker.port)}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


async def _admin(database_url: str) -> tuple[str, str]:
    conn = await db.connect(database_url, application_name="tests")
    try:
        await tenants.insert(conn, "browser", "Browser tests")
        await users.insert(
            conn,
            tenant_id="browser",
            email="ops@browser.test",
            password_hash=hash_password("browser-pass-1"),
            role="admin",
        )
    finally:
        await conn.close()
    return "ops@browser.test", "browser-pass-1"


async def test_console_end_to_end(services: dict[str, str], database_url: str) -> None:
    email, password = await _admin(database_url)
    assert (ROOT / "frontend" / "dist" / "index.html").exists(), "run make setup first"
    result = subprocess.run(
        ["npm", "run", "e2e", "--prefix", "frontend"],
        env={
            **os.environ,
            "E2E_BASE_URL": services["ui"],
            "E2E_EMAIL": email,
            "E2E_PASSWORD": password,
            "E2E_MQTT_URL": f"mqtt://127.0.0.1:{services['broker_port']}",
            "E2E_CHROMIUM": CHROMIUM,
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
