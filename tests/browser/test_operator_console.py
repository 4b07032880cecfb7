"""Issue 18 in headless Chromium against the real stack (frontend/e2e/operator.e2e.mjs):
API docs with the network blocked, the console for each role, 375 px, an unknown device."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

from iotcloud.provisioning import create_devices
from shared import db
from shared.repositories import history, tenants, users
from shared.security import hash_password
from tests.browser.test_console import CHROMIUM, pytestmark, services  # noqa: F401 - fixture
from tests.support import ROOT

PASSWORD = "browser-pass-1"


async def seed(database_url: str, tenant_id: str = "opex") -> dict[str, str]:
    conn = await db.connect(database_url, application_name="tests")
    try:
        await tenants.insert(conn, tenant_id, "Opex Corp")
        emails = {}
        for role in ("admin", "operator", "viewer"):
            emails[role] = f"{role}@{tenant_id}.test"
            await users.insert(
                conn,
                tenant_id=tenant_id,
                email=emails[role],
                password_hash=hash_password(PASSWORD),
                role=role,
            )
    finally:
        await conn.close()
    await create_devices(database_url, tenant_id=tenant_id, specs=[("opex-meter-1", "Meter")])
    return emails


def run_e2e(base_url: str, emails: dict[str, str], *, passed: int, **extra: Any) -> None:
    result = subprocess.run(
        ["node", "--test", "--test-reporter=spec", "e2e/operator.e2e.mjs"],
        env={
            **os.environ,
            "E2E_BASE_URL": base_url,
            "E2E_PASSWORD": PASSWORD,
            "E2E_TENANT": "opex",
            "E2E_TENANT_NAME": "Opex Corp",
            "E2E_ADMIN": emails["admin"],
            "E2E_OPERATOR": emails["operator"],
            "E2E_VIEWER": emails["viewer"],
            "E2E_DEVICE": "opex-meter-1",
            "E2E_CHROMIUM": CHROMIUM,
            **extra,
        },
        cwd=ROOT / "frontend",
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # Ran, not skipped: node's summary counts them.
    assert f"\N{INFORMATION SOURCE} pass {passed}\n" in result.stdout, result.stdout[-3000:]


async def test_docs_offline_roles_phone_and_unknown_device(
    services: dict[str, str],  # noqa: F811 - the fixture
    database_url: str,
) -> None:
    emails = await seed(database_url)
    run_e2e(services["ui"], emails, passed=7)


async def test_the_charts_render_with_data(
    services: dict[str, str],  # noqa: F811 - the fixture
    database_url: str,
) -> None:
    """The fleet chart from the kept samples, the device chart from its reports' history."""
    emails = await seed(database_url)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    conn = await db.connect(database_url, application_name="tests")
    try:
        for hours_ago, (synced, pending, stale) in enumerate([(0, 1, 0), (1, 0, 0), (0, 0, 1)]):
            await conn.execute(
                "INSERT INTO fleet_count_samples VALUES ($1, $2, 1, $3, $4, $5, 0)",
                "opex",
                now - timedelta(hours=hours_ago + 1),
                synced,
                pending,
                stale,
            )
        for minute, temperature in enumerate([20.5, 21.0, 22.25, 21.75]):
            await history.insert(
                conn,
                tenant_id="opex",
                device_id="opex-meter-1",
                kind="reported",
                actor_type="device",
                actor_email=None,
                version=0,
                patch={"temperature": temperature, "status": "ok"},
                at=now - timedelta(minutes=10 - minute),
            )
    finally:
        await conn.close()
    run_e2e(services["ui"], emails, passed=1, E2E_CHARTS="1", E2E_ONLY="charts")
