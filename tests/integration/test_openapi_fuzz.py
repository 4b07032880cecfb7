"""schemathesis over both services' OpenAPI documents, as real processes on a real database
and broker: no generated request, however odd, is answered with a server error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, Broker, ServiceProcess

# Fixed, so a failure reproduces; bounded, so the run takes about a minute on two cores.
SEED = "20261"
MAX_EXAMPLES = "6"


def _cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "iotcloud.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout.strip()


def _schemathesis(url: str, workdir: Path, *headers: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--seed",
        SEED,
        "--max-examples",
        MAX_EXAMPLES,
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        # Stateful sequences multiply the run time; single requests are what find 500s.
        "--phases",
        "examples,coverage,fuzzing",
    ]
    for header in headers:
        command += ["--header", header]
    # In a scratch directory: schemathesis keeps a cache of what it found in its working one.
    return subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.timeout(900)
async def test_schemathesis_finds_no_server_error(
    database_url: str, broker: Broker, tmp_path: Path
) -> None:
    services = [
        ServiceProcess.make(name, home=tmp_path, database_url=database_url, mqtt_url=broker.url)
        for name in ("ui", "ingest")
    ]
    ui, ingest = services
    env = {**ui.env}
    _cli(env, "migrate")
    _cli(env, "tenant", "create", "fuzz")
    _cli(
        env, "user", "create", "--tenant", "fuzz", "--email", "admin@fuzz.test",
        "--password", "fuzz-password-1", "--role", "admin",
    )  # fmt: skip
    bearer = _cli(env, "token", "--email", "admin@fuzz.test")
    device = _cli(env, "device", "create", "--tenant", "fuzz", "--id", "fuzz-device")
    token = json.loads(device)["provision_token"]
    try:
        for service in services:
            service.start()
        for service in services:
            await service.wait_ready()
        runs = {
            "ui_iot": _schemathesis(ui.url, tmp_path, f"Authorization: Bearer {bearer}"),
            "ingest_iot": _schemathesis(ingest.url, tmp_path, f"X-Provision-Token: {token}"),
        }
    finally:
        for service in services:
            service.stop()
    for name, run in runs.items():
        report = (run.stdout + run.stderr)[-6000:]
        assert run.returncode == 0, f"{name}:\n{report}"
        assert "Server error" not in run.stdout, f"{name}:\n{report}"
