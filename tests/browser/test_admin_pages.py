"""The console's Users and Audit pages in headless Chromium against the real running stack
(frontend/e2e/admin.e2e.mjs)."""

from __future__ import annotations

import os
import subprocess

from tests.browser.test_console import CHROMIUM, _admin, pytestmark, services
from tests.support import ROOT

__all__ = ["pytestmark", "services"]


async def test_users_and_audit_pages(services: dict[str, str], database_url: str) -> None:
    email, password = await _admin(database_url)
    assert (ROOT / "frontend" / "dist" / "index.html").exists(), "run make setup first"
    result = subprocess.run(
        ["node", "--test", "--test-reporter=spec", "frontend/e2e/admin.e2e.mjs"],
        env={
            **os.environ,
            "E2E_BASE_URL": services["ui"],
            "E2E_EMAIL": email,
            "E2E_PASSWORD": password,
            "E2E_CHROMIUM": CHROMIUM,
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # Every step ran (a step after a failure would be skipped, not failed).
    assert "skip" not in result.stdout.lower().replace("skipped 0", ""), result.stdout
    assert "change your own password" in result.stdout, result.stdout
