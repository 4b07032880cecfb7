"""``iotcloud up`` runs ui_iot, ingest_iot and its broker as child processes and restarts any
that dies (a real ``iotcloud up`` on a tmp IOTCLOUD_HOME, the per-test database, free ports)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import httpx
import pytest

from iotcloud.provisioning import create_devices
from shared import db
from shared.repositories import tenants
from shared.services.devices import NewDevice
from tests.support import ROOT, eventually, free_port

pytestmark = pytest.mark.fault


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    home: Path
    ui_port: int
    ingest_port: int
    broker_port: int
    log: Path

    def children(self) -> dict[str, int]:
        """Child pids by role, from the kernel's own list of the supervisor's children."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        found: dict[str, int] = {}
        for pid in path.read_text().split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if b"ui" in argv and b"serve" in argv:
                found["ui_iot"] = int(pid)
            elif b"ingest" in argv and b"serve" in argv:
                found["ingest_iot"] = int(pid)
            elif any(b"mosquitto" in part or b"fallback_broker" in part for part in argv):
                found["broker"] = int(pid)
        return found

    async def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"iotcloud up exited; see {self.log}")
        async with httpx.AsyncClient(timeout=2) as client:
            for port in (self.ui_port, self.ingest_port):
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code != 200:
                        return False
                except httpx.TransportError:
                    return False
        return True


def start_up(
    tmp_path: Path, database_url: str, *, home: Path | None = None, **extra_env: str
) -> Up:
    """``iotcloud up`` in its own home under ``tmp_path``, or in a ``home`` shared with another
    instance (two instances of one checkout)."""
    if home is None:
        home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    tmp_path.mkdir(exist_ok=True)
    up = Up(
        process=None,  # type: ignore[arg-type]
        home=home,
        ui_port=free_port(),
        ingest_port=free_port(),
        broker_port=free_port(),
        log=tmp_path / "up.log",
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"MQTT_URL", "IOTCLOUD_JWT_SECRET"}
    }
    env |= {
        "IOTCLOUD_HOME": str(home),
        "DATABASE_URL": database_url,
        "UI_PORT": str(up.ui_port),
        "INGEST_PORT": str(up.ingest_port),
        "IOTCLOUD_BROKER_PORT": str(up.broker_port),
        "IOTCLOUD_BROKER_TLS_PORT": str(free_port()),
        "PYTHONPATH": str(ROOT / "services"),
        **extra_env,
    }
    with up.log.open("ab") as log:
        up.process = subprocess.Popen(
            [sys.executable, "-m", "iotcloud.cli", "up", *env.get("IOTCLOUD_UP_ARGS", "").split()],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return up


@pytest.fixture
def stop_after() -> Iterator[list[Up]]:
    running: list[Up] = []
    yield running
    for up in running:
        if up.process.poll() is None:
            up.process.send_signal(signal.SIGTERM)
            try:
                up.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(up.process.pid, signal.SIGKILL)
                up.process.wait()


async def make_device(database_url: str, up: Up) -> NewDevice:
    conn = await db.connect(database_url, application_name="tests")
    try:
        await tenants.insert(conn, "sup", "sup")
    finally:
        await conn.close()
    (device,) = await create_devices(database_url, tenant_id="sup", specs=[("sup-device", None)])
    return device


async def device_can_log_in(up: Up, device: NewDevice) -> bool:
    try:
        async with aiomqtt.Client(
            "127.0.0.1",
            up.broker_port,
            username=device.device_id,
            password=device.provision_token,
            identifier=device.device_id,
            timeout=3,
        ):
            return True
    except aiomqtt.MqttError:
        return False


async def kill_and_wait_for_restart(up: Up, role: str) -> None:
    before = up.children()
    assert role in before, f"{role} is not a child of iotcloud up: {before}"
    os.kill(before[role], signal.SIGKILL)

    async def restarted() -> bool:
        now = up.children()
        return role in now and now[role] != before[role] and await up.ready()

    await eventually(restarted, timeout=30, interval=0.2)


async def test_up_restarts_any_child_that_dies(
    tmp_path: Path, database_url: str, stop_after: list[Up]
) -> None:
    up = start_up(tmp_path, database_url)
    stop_after.append(up)
    device = await make_device(database_url, up)
    await eventually(up.ready, timeout=40, interval=0.2)
    assert set(up.children()) == {"ui_iot", "ingest_iot", "broker"}
    assert await device_can_log_in(up, device)

    for role in ("ingest_iot", "ui_iot", "broker"):
        await kill_and_wait_for_restart(up, role)
    # The restarted broker got its accounts from the database again.
    await eventually(lambda: device_can_log_in(up, device), timeout=10, interval=0.2)

    children = up.children().values()
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(20) == 0
    for pid in children:
        assert (
            not Path(f"/proc/{pid}").exists()
            or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
        )


async def test_up_falls_back_to_the_in_process_broker(
    tmp_path: Path, database_url: str, stop_after: list[Up]
) -> None:
    up = start_up(tmp_path, database_url, IOTCLOUD_FALLBACK_BROKER="1")
    stop_after.append(up)
    device = await make_device(database_url, up)
    await eventually(up.ready, timeout=40, interval=0.2)
    assert "fallback_broker" in Path(f"/proc/{up.children()['broker']}/cmdline").read_text()
    assert await device_can_log_in(up, device)
    await kill_and_wait_for_restart(up, "broker")
    await eventually(lambda: device_can_log_in(up, device), timeout=10, interval=0.2)


async def test_two_instances_in_one_checkout_share_no_broker_state(
    tmp_path: Path, database_url: str, stop_after: list[Up]
) -> None:
    """Issue 12: the second instance's broker refused its own services while the first ran,
    because both kept their accounts in one file."""
    shared_home = tmp_path / "checkout"
    first = start_up(tmp_path / "first", database_url, home=shared_home)
    stop_after.append(first)
    await eventually(first.ready, timeout=60, interval=0.5)
    second = start_up(tmp_path / "second", database_url, home=shared_home)
    stop_after.append(second)
    await eventually(second.ready, timeout=60, interval=0.5)  # its ingest_iot is on its broker
    assert await first.ready()
    device = await make_device(database_url, first)
    assert await device_can_log_in(first, device)
    assert await device_can_log_in(second, device)
    assert (shared_home / f"broker-{first.broker_port}").is_dir()
    assert (shared_home / f"broker-{second.broker_port}").is_dir()
