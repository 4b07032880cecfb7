"""The local runtime explains itself: a taken PostgreSQL port, ``iotcloud down`` and
``status``, logs under ``.iotcloud/logs/`` with the banner last on screen, a broker that
does not run as root."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_supervisor import Up, start_up, stop_after  # noqa: F401 - fixture
from tests.support import ROOT, eventually, free_port


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "iotcloud.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def home() -> Iterator[Path]:
    # Not under pytest's tmp_path: PostgreSQL runs unprivileged and must reach it.
    path = Path(tempfile.mkdtemp(prefix="iotcloud-runtime-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        run({**_env(path)}, "down")
        shutil.rmtree(path, ignore_errors=True)


def _env(home: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "MQTT_URL", "IOTCLOUD_PG_PORT"}
    }
    return env | {"IOTCLOUD_HOME": str(home), "UI_PORT": str(free_port())}


@contextlib.contextmanager
def holding(port: int) -> Iterator[None]:
    """Something else listens on ``port`` (or already did)."""
    sock = socket.socket()
    try:
        with contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            sock.listen()
        yield
    finally:
        sock.close()


def test_a_taken_port_is_swapped_when_unset_and_named_when_set(home: Path) -> None:
    env = _env(home)
    with holding(5544):
        started = run(env, "tenant", "create", "acme")
        assert started.returncode == 0, started.stderr
        assert "port 5544 is taken" in started.stderr and "IOTCLOUD_PG_PORT" in started.stderr
        port = int((home / "pg" / "port").read_text())
        assert port != 5544
        status = json.loads(run(env, "status", "--json").stdout)
        assert status["database"]["running"] is True
        assert f":{port}/" in status["database"]["url"]

        # Stopped and started again: the remembered port, no new note.
        assert "stopped the embedded PostgreSQL" in run(env, "down").stdout
        assert json.loads(run(env, "status", "--json").stdout)["database"]["running"] is False
        again = run(env, "device", "list", "--tenant", "acme", "--json")
        assert again.returncode == 0 and "is taken" not in again.stderr
        assert json.loads(again.stdout) == {"items": []}
        run(env, "down")

    # A port set by IOTCLOUD_PG_PORT that is taken: one line naming both.
    taken = free_port()
    with holding(taken):
        refused = run({**env, "IOTCLOUD_PG_PORT": str(taken)}, "migrate")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert str(taken) in lines[0] and "IOTCLOUD_PG_PORT" in lines[0]


async def test_up_logs_to_files_down_stops_it_and_the_broker_is_not_root(
    tmp_path: Path,
    home: Path,
    database_url: str,
    stop_after: list[Up],  # noqa: F811 - the fixture
) -> None:
    # A home other users can reach (pytest's tmp_path is private to root): the broker's
    # unprivileged user must read its store and certificates there.
    up = start_up(tmp_path, database_url, home=home)
    stop_after.append(up)
    await eventually(up.ready, timeout=60, interval=0.3)
    env = {
        **os.environ,
        "IOTCLOUD_HOME": str(up.home),
        "DATABASE_URL": database_url,
        "UI_PORT": str(up.ui_port),
        "INGEST_PORT": str(up.ingest_port),
        "IOTCLOUD_BROKER_PORT": str(up.broker_port),
    }
    status = json.loads(run(env, "status", "--json").stdout)
    assert status["up"] == {"running": True, "pid": up.process.pid}
    assert status["ui_iot"]["listening"] and status["ingest_iot"]["listening"]
    assert status["broker"]["listening"]
    assert status["database"]["source"] == "DATABASE_URL" and status["database"]["reachable"]
    # Where, never with what credentials.
    secret = run({**env, "DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/x"}, "status")
    assert "not reachable, DATABASE_URL: 127.0.0.1:1" in secret.stdout
    assert "hunter2" not in secret.stdout

    # The children log to files; the screen ends with the banner.
    screen = up.log.read_text().strip().splitlines()
    assert screen[-1].startswith("Press Ctrl-C or run `iotcloud down`"), screen
    assert any("console and operator API" in line for line in screen)
    assert not any("mosquitto" in line.lower() and "root" in line.lower() for line in screen)
    logs = up.home / "logs"
    assert {"broker.log", "ui_iot.log", "ingest_iot.log"} <= {p.name for p in logs.iterdir()}

    broker_pid = up.children()["broker"]
    uid = next(
        int(line.split()[1])
        for line in Path(f"/proc/{broker_pid}/status").read_text().splitlines()
        if line.startswith("Uid:")
    )
    if os.geteuid() == 0:
        assert uid != 0, "Mosquitto kept root"
        assert "should not be run as root" not in (logs / "broker.log").read_text()

    stopped = run(env, "down")
    assert stopped.returncode == 0 and f"pid {up.process.pid}" in stopped.stdout
    assert up.process.wait(30) == 0
    assert json.loads(run(env, "status", "--json").stdout)["up"]["running"] is False
    assert run(env, "down").stdout.strip() == "nothing was running"


async def test_up_verbose_shows_the_logs_and_still_writes_them(
    tmp_path: Path,
    database_url: str,
    stop_after: list[Up],  # noqa: F811 - the fixture
) -> None:
    up = start_up(tmp_path, database_url, IOTCLOUD_LOG_LEVEL="info", IOTCLOUD_UP_ARGS="--verbose")
    stop_after.append(up)
    await eventually(up.ready, timeout=60, interval=0.3)

    async def logged() -> bool:
        return "ui_iot: " in up.log.read_text() and (up.home / "logs" / "ui_iot.log").exists()

    await eventually(logged, timeout=20, interval=0.3)
    screen = up.log.read_text()
    assert "iotcloud is running:" in screen
    in_file = (up.home / "logs" / "ui_iot.log").read_text()
    # The same lines, on screen with the child's name in front.
    shown = [
        line.removeprefix("ui_iot: ") for line in screen.splitlines() if line.startswith("ui_iot: ")
    ]
    assert shown and all(line in in_file for line in shown[:3])
