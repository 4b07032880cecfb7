"""``scripts/acceptance.sh`` runs the user's acceptance steps 1-10 against a running install
(here ``iotcloud up`` on the per-test database) and passes each; a broken install fails."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from shared import db
from shared.repositories import tenants, users
from shared.security import hash_password
from tests.integration.test_supervisor import Up, start_up, stop_after  # noqa: F401 - fixture
from tests.support import ROOT, eventually, free_port


async def test_the_acceptance_script_passes_against_a_running_stack(
    tmp_path: Path,
    database_url: str,
    stop_after: list[Up],  # noqa: F811 - the fixture
) -> None:
    up = start_up(tmp_path, database_url)
    stop_after.append(up)
    conn = await db.connect(database_url, application_name="tests")
    try:
        await tenants.insert(conn, "accept", "Acceptance")
        await users.insert(
            conn,
            tenant_id="accept",
            email="admin@accept.test",
            password_hash=hash_password("accept-pass-1"),
            role="admin",
        )
    finally:
        await conn.close()
    await eventually(up.ready, timeout=60, interval=0.3)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "IOTCLOUD_HOME": str(up.home),  # the JWT secret `iotcloud up` signs with
        "UI_URL": f"http://127.0.0.1:{up.ui_port}",
        "INGEST_URL": f"http://127.0.0.1:{up.ingest_port}",
        "MQTT_PORT": str(up.broker_port),
        "ACCEPTANCE_EMAIL": "admin@accept.test",
    }
    result = subprocess.run(
        ["bash", "scripts/acceptance.sh"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    passed = re.findall(r"^PASS  step (\d+):", out, flags=re.MULTILINE)
    assert passed == [str(n) for n in range(1, 11)], out
    assert "acceptance: every step passed" in out

    # Against an operator API that is not there: it stops with one line, exit 2.
    refused = subprocess.run(
        ["bash", "scripts/acceptance.sh"],
        env={**env, "UI_URL": f"http://127.0.0.1:{free_port()}", "ACCEPTANCE_STEPS": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "does not accept the token (UI_URL, TOKEN)" in refused.stderr

    # A failing step says FAIL and the script exits 1: the device API is elsewhere.
    failing = subprocess.run(
        ["bash", "scripts/acceptance.sh"],
        env={**env, "INGEST_URL": f"http://127.0.0.1:{free_port()}", "ACCEPTANCE_STEPS": "1 6"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "PASS  step 1:" in failing.stdout and "FAIL  step 6:" in failing.stdout
