"""The rollouts page and the rejection badge in headless Chromium against the real running
stack (frontend/e2e/rollouts.e2e.mjs): nothing mocked; the devices answer over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.browser.test_console import CHROMIUM, _admin, _wait_ready, pytestmark  # noqa: F401
from tests.integration.test_fleet import add_fleet
from tests.support import ROOT, Broker, free_port


@pytest.fixture
def stack_urls(database_url: str, broker: Broker, tmp_path: Path) -> Iterator[dict[str, str]]:
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
        yield {"ui": f"http://127.0.0.1:{ui_port}", "ingest": f"http://127.0.0.1:{ingest_port}"}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


async def test_rollouts_page(stack_urls: dict[str, str], database_url: str) -> None:
    email, password = await _admin(database_url)
    assert (ROOT / "frontend" / "dist" / "index.html").exists(), "run make setup first"
    await add_fleet(database_url, "browser", 11)  # fd-0000000 is ring:canary, the rest main
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE devices SET token_hash = sha256(convert_to('tok-' || device_id, 'UTF8'))"
        )
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=stack_urls["ui"]) as ui:
        token = (
            await ui.post("/auth/token", data={"username": email, "password": password})
        ).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        staged = await ui.post(
            "/customer/fleet/rollouts",
            json={
                "filter": {"tag": "ring:main"},
                "desired": {"fw": "2.0"},
                "stages": [50, 100],
                "success": {
                    "synced_ratio": 0.8,
                    "within_s": 600,
                    "health": {"pointer": "/reported/health", "op": "==", "value": "ok"},
                },
            },
            headers=headers,
        )
        assert staged.status_code == 202, staged.text
        other = await ui.post(
            "/customer/fleet/rollouts",
            json={
                "filter": {"tag": "ring:canary"},
                "desired": {"mode": "eco"},
                "stages": [100],
                "success": {"synced_ratio": 1, "within_s": 600},
            },
            headers=headers,
        )
        assert other.status_code == 202, other.text
    result = subprocess.run(
        ["node", "--test", "--test-reporter=spec", "e2e/rollouts.e2e.mjs"],
        env={
            **os.environ,
            "E2E_BASE_URL": stack_urls["ui"],
            "E2E_INGEST_URL": stack_urls["ingest"],
            "E2E_EMAIL": email,
            "E2E_PASSWORD": password,
            "E2E_ROLLOUT": staged.json()["rollout_id"],
            "E2E_OTHER_ROLLOUT": other.json()["rollout_id"],
            "E2E_DEVICES": ",".join(f"fd-{n:07d}" for n in range(1, 11)),
            "E2E_REJECTER": "fd-0000001",
            "E2E_CHROMIUM": CHROMIUM,
        },
        cwd=ROOT / "frontend",
        capture_output=True,
        text=True,
        timeout=240,
    )
    if result.returncode != 0:
        async with httpx.AsyncClient(base_url=stack_urls["ui"]) as ui:
            document = (
                await ui.get(
                    f"/customer/fleet/rollouts/{staged.json()['rollout_id']}", headers=headers
                )
            ).text
        raise AssertionError(result.stdout[-4000:] + result.stderr[-2000:] + "\n" + document)
