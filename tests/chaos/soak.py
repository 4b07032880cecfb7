"""A chaos soak: devices and operators work while parts of the platform are killed.

``iotcloud up`` runs the whole stack (embedded PostgreSQL, Mosquitto with the auth plugin,
ui_iot, ingest_iot) under a private home, with a second ingest_iot replica beside it. The
load follows the device contract of docs/devices.md: each simulated device reports its
latest reading until ``/reported/accepted`` with its clientToken arrives, resending the
latest (never an older one), and applies every desired state it is sent. Operators write
desired state one device at a time and once for the whole fleet (a bulk job); an SSE client
follows the tenant's stream, resuming with Last-Event-ID.

Faults, at random from a printed seed: SIGKILL of ui_iot, ingest_iot, the broker, the second
ingest replica and the embedded PostgreSQL (restarted by the soak, as an operator's service
manager would), and SIGSTOP of the broker for 10 s. Each fault opens a window that closes
once every part answers again.

At the end, with the faults stopped: every acknowledged report is committed exactly as it
was acknowledged; no device's reported state went back to an older report; every device
holds its latest desired version and has reported it; the SSE client saw every event id of
the tenant in order, with no gap; no 5xx outside a fault's window and only 503 inside one;
the bulk job finished with the right counts; and nothing is left running.

    python -m tests.chaos.soak --duration 1800 --seed 7 --report docs/reliability.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import httpx
import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "services"))

from iotcloud.embedded import EmbeddedBroker, EmbeddedPostgres  # noqa: E402
from shared.security import hash_password  # noqa: E402

TENANT = "soak"
EMAIL = "ops@soak.test"
PASSWORD = "soak-password-123"
FAULTS = ("ui_iot", "ingest_iot", "broker", "postgres", "broker_hang", "replica")
ACK_TIMEOUT_S = 2.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Window:
    fault: str
    start: float
    end: float | None = None


@dataclass
class Tally:
    started: float = field(default_factory=time.monotonic)
    windows: list[Window] = field(default_factory=list)
    http: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    recovery: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    reports_sent: int = 0
    resends: int = 0
    desired_writes: int = 0

    def in_window(self, at: float, grace: float = 2.0) -> bool:
        return any(
            w.start - 0.5 <= at <= (w.end if w.end is not None else float("inf")) + grace
            for w in self.windows
        )

    def http_result(self, what: str, status: int | None, at: float) -> None:
        """Record one operator or device HTTP call: status None is a connection failure."""
        inside = self.in_window(at)
        key = "error" if status is None else str(status)
        self.http[key] += 1
        if status is None or status == 503:
            if not inside:
                self.violations.append(f"{what}: {key} outside a fault window at {at:.1f}s")
        elif status >= 500:
            self.violations.append(f"{what}: {status} at {at:.1f}s")


@dataclass
class Device:
    device_id: str
    token: str
    n: int = 0
    desired_version: int = 0
    desired: dict[str, Any] = field(default_factory=dict)
    # clientToken -> (n, version) of every report the service acknowledged
    acked: dict[str, tuple[int, int]] = field(default_factory=dict)
    applied_version: int = 0
    pending: dict[str, Any] | None = None
    pending_since: float = 0.0
    pending_sends: int = 0  # how often the pending report went out
    rejected: int = 0


class Stack:
    """``iotcloud up`` under a private home, and the soak's second ingest replica."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.pg_port, self.broker_port = free_port(), free_port()
        self.ui_port, self.ingest_port, self.replica_port = free_port(), free_port(), free_port()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "MQTT_URL", "IOTCLOUD_JWT_SECRET"}
        }
        self.env |= {
            "IOTCLOUD_HOME": str(home),
            "IOTCLOUD_PG_PORT": str(self.pg_port),
            "IOTCLOUD_BROKER_PORT": str(self.broker_port),
            "IOTCLOUD_BROKER_TLS_PORT": str(free_port()),
            "IOTCLOUD_BROKER_CERT_PORT": str(free_port()),
            "UI_PORT": str(self.ui_port),
            "INGEST_PORT": str(self.ingest_port),
            "PYTHONPATH": str(ROOT / "services"),
        }
        self.up: subprocess.Popen[bytes] | None = None
        self.replica: subprocess.Popen[bytes] | None = None
        self.postgres = EmbeddedPostgres(home, self.pg_port)
        self.broker = EmbeddedBroker(home, self.broker_port)
        self.log = home / "up.log"

    @property
    def database_url(self) -> str:
        return self.postgres.url

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.up = subprocess.Popen(
                [sys.executable, "-m", "iotcloud.cli", "up"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_replica(self) -> None:
        env = self.env | {
            "DATABASE_URL": self.database_url,
            "MQTT_URL": self.broker.url,
            "IOTCLOUD_JWT_SECRET": (self.home / "jwt.secret").read_text().strip(),
            "INGEST_PORT": str(self.replica_port),
            "IOTCLOUD_REPLICA": "soak-b",
        }
        with (self.home / "replica.log").open("ab") as log:
            self.replica = subprocess.Popen(
                [sys.executable, "-m", "iotcloud.cli", "serve", "ingest"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def children(self) -> dict[str, int]:
        assert self.up is not None
        path = Path(f"/proc/{self.up.pid}/task/{self.up.pid}/children")
        found: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError):
            for pid in path.read_text().split():
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except FileNotFoundError:
                    continue
                if b"serve" in argv and b"ui" in argv:
                    found["ui_iot"] = int(pid)
                elif b"serve" in argv and b"ingest" in argv:
                    found["ingest_iot"] = int(pid)
                elif any(b"mosquitto" in part for part in argv):
                    found["broker"] = int(pid)
        return found

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.postgres.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    async def healthy(self) -> bool:
        async with httpx.AsyncClient(timeout=2) as client:
            for port in (self.ui_port, self.ingest_port, self.replica_port):
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code != 200:
                        return False
                except httpx.TransportError:
                    return False
        return True

    def stop(self) -> None:
        for process in (self.replica, self.up):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.postgres.stop()

    def leftovers(self) -> list[str]:
        """Processes of this stack still running (their command line names its home)."""
        found = []
        marker = str(self.home).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in cmdline or marker in environ:
                shown = cmdline.replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{entry.name}: {shown}")
        return found


async def wait_for(check: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(Exception):
            if await check():
                return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout:.0f}s")


class Soak:
    def __init__(self, *, duration: float, seed: int, devices: int, home: Path) -> None:
        self.duration = duration
        self.seed = seed
        self.random = random.Random(seed)
        self.stack = Stack(home)
        self.tally = Tally()
        self.devices = [Device(f"soak-{n:03d}", "") for n in range(devices)]
        self.stopping = asyncio.Event()  # no new readings, no operator writes
        self.done = asyncio.Event()  # results checked: the devices stop
        self.sse_ids: list[int] = []
        self.job_id: str | None = None
        self.headers: dict[str, str] = {}
        self.injected: Counter[str] = Counter()

    def now(self) -> float:
        return time.monotonic() - self.tally.started

    # --- set-up -------------------------------------------------------------------------

    async def set_up(self) -> None:
        self.stack.start()
        await wait_for(self._ui_and_ingest_ready, 120, "iotcloud up")
        conn = await asyncpg.connect(self.stack.database_url)
        try:
            await conn.execute(
                "INSERT INTO tenants (tenant_id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING",
                TENANT,
            )
            await conn.execute(
                """INSERT INTO users (tenant_id, email, password_hash, role)
                   VALUES ($1, $2, $3, 'admin')""",
                TENANT,
                EMAIL,
                hash_password(PASSWORD),
            )
        finally:
            await conn.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.stack.ui_port}") as ui:
            token = await ui.post("/auth/token", data={"username": EMAIL, "password": PASSWORD})
            token.raise_for_status()
            self.headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            created = await ui.post(
                "/customer/devices/batch",
                json={"devices": [{"device_id": d.device_id} for d in self.devices]},
                headers=self.headers,
                timeout=30,
            )
            created.raise_for_status()
            tokens = {
                item["device_id"]: item["provision_token"] for item in created.json()["items"]
            }
        for device in self.devices:
            device.token = tokens[device.device_id]
        self.stack.start_replica()
        await wait_for(self.stack.healthy, 60, "the second ingest replica")
        self.tally.started = time.monotonic()

    async def _ui_and_ingest_ready(self) -> bool:
        async with httpx.AsyncClient(timeout=2) as client:
            for port in (self.stack.ui_port, self.stack.ingest_port):
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code != 200:
                    return False
        return True

    # --- load ---------------------------------------------------------------------------

    async def run_device(self, device: Device) -> None:
        """One device under the contract, until the soak has checked its results."""
        prefix = f"tenant/{TENANT}/device/{device.device_id}/shadow/"
        while not self.done.is_set():
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.stack.broker_port,
                    username=device.device_id,
                    password=device.token,
                    identifier=device.device_id,
                    keepalive=10,
                    timeout=5,
                ) as client:
                    await client.subscribe(prefix + "desired", qos=1)
                    await client.subscribe(prefix + "reported/+", qos=1)
                    device.pending_since = 0.0  # a new connection: send what is pending now
                    async with asyncio.TaskGroup() as tasks:
                        inbox = tasks.create_task(self._device_inbox(device, client, prefix))
                        await self._device_reports(device, client, prefix)
                        inbox.cancel()
            except* (aiomqtt.MqttError, OSError, TimeoutError):
                await asyncio.sleep(self.random.uniform(0.2, 1.0))

    def _new_reading(self, device: Device) -> None:
        """The device's latest state replaces whatever was not acknowledged yet."""
        device.n += 1
        device.pending = {
            "reported": {**device.desired, "n": device.n},
            "version": device.desired_version,
            "clientToken": f"{device.device_id}-{device.n}",
            "seq": device.n,
        }
        device.pending_since = 0.0
        device.pending_sends = 0

    async def _device_reports(self, device: Device, client: aiomqtt.Client, prefix: str) -> None:
        next_reading = 0.0
        while not self.done.is_set():
            now = time.monotonic()
            if device.applied_version != device.desired_version or (
                not self.stopping.is_set() and now >= next_reading
            ):
                device.applied_version = device.desired_version
                self._new_reading(device)
                next_reading = now + self.random.uniform(0.3, 0.8)
            pending = device.pending
            if pending is not None and now - device.pending_since >= ACK_TIMEOUT_S:
                if device.pending_sends:  # no reply in time, or sent before a reconnect
                    self.tally.resends += 1
                device.pending_sends += 1
                device.pending_since = now
                self.tally.reports_sent += 1
                await client.publish(prefix + "reported", orjson.dumps(pending), qos=1)
            await asyncio.sleep(0.05)

    async def _device_inbox(self, device: Device, client: aiomqtt.Client, prefix: str) -> None:
        async for message in client.messages:
            body = orjson.loads(message.payload)  # type: ignore[arg-type]
            topic = message.topic.value
            pending = device.pending
            if topic == prefix + "desired":
                if body["version"] > device.desired_version:
                    device.desired_version = body["version"]
                    device.desired = body["desired"]
            elif topic == prefix + "reported/accepted":
                if pending is not None and body.get("clientToken") == pending["clientToken"]:
                    device.acked[pending["clientToken"]] = (pending["seq"], pending["version"])
                    device.pending = None
            elif topic == prefix + "reported/rejected":
                device.rejected += 1
                if pending is not None and body.get("clientToken") == pending["clientToken"]:
                    # Refused (a newer desired version is on its way): report afresh.
                    device.applied_version = -1

    async def operators(self) -> None:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.stack.ui_port}", headers=self.headers, timeout=10
        ) as ui:
            bulk_at = self.duration / 3
            k = 0
            while not self.stopping.is_set():
                k += 1
                device = self.random.choice(self.devices)
                at = self.now()
                try:
                    response = await ui.patch(
                        f"/customer/devices/{device.device_id}/twin/desired",
                        json={"desired": {"setpoint": k}},
                    )
                    status: int | None = response.status_code
                    if status == 200:
                        self.tally.desired_writes += 1
                except httpx.TransportError:
                    status = None
                self.tally.http_result("PATCH desired", status, at)
                if self.job_id is None and self.now() >= bulk_at:
                    await self._start_bulk_job(ui)
                await asyncio.sleep(self.random.uniform(0.2, 0.6))

    async def _start_bulk_job(self, ui: httpx.AsyncClient) -> None:
        at = self.now()
        try:
            response = await ui.post(
                "/customer/fleet/desired",
                json={"filter": {}, "desired": {"mode": f"bulk-{self.seed}"}},
            )
        except httpx.TransportError:
            self.tally.http_result("POST fleet/desired", None, at)
            return
        self.tally.http_result("POST fleet/desired", response.status_code, at)
        if response.status_code == 202:
            self.job_id = response.json()["job_id"]
            self.tally.desired_writes += len(self.devices)

    async def sse_client(self) -> None:
        last = "0"  # from the tenant's first event on
        url = f"http://127.0.0.1:{self.stack.ui_port}/customer/events"
        # It listens until the results are checked: events written while the fleet settles
        # (a late report, a device reconnecting) count too.
        while not self.done.is_set():
            headers = {**self.headers, "Last-Event-ID": last}
            try:
                async with (
                    httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client,
                    client.stream("GET", url, headers=headers) as response,
                ):
                    if response.status_code != 200:
                        self.tally.http_result("GET events", response.status_code, self.now())
                        await asyncio.sleep(0.5)
                        continue
                    async for line in response.aiter_lines():
                        if line.startswith("id:"):
                            last = line[3:].strip()
                            self.sse_ids.append(int(last))
                        if self.done.is_set():
                            return
            except (httpx.TransportError, httpx.StreamError):
                await asyncio.sleep(0.3)

    # --- faults -------------------------------------------------------------------------

    async def faults(self) -> None:
        # A short run still sees every kind of fault: they come in shuffled rounds of all six.
        interval = max(2.0, min(20.0, self.duration / 40))
        end = self.duration - max(10.0, interval)
        order: list[str] = []
        await asyncio.sleep(interval / 2)
        while self.now() < end:
            if not order:
                order = list(FAULTS)
                self.random.shuffle(order)
            fault = order.pop()
            window = Window(fault, self.now())
            self.tally.windows.append(window)
            print(f"[{window.start:6.1f}s] fault: {fault}", flush=True)
            recovered = await self._inject(fault)
            window.end = self.now()
            self.injected[fault] += 1
            self.tally.recovery[fault].append(recovered)
            print(f"[{window.end:6.1f}s]   recovered in {recovered:.1f}s", flush=True)
            await asyncio.sleep(self.random.uniform(interval * 0.5, interval * 1.5))
        await asyncio.sleep(max(0.0, self.duration - self.now()))

    async def _inject(self, fault: str) -> float:
        started = time.monotonic()
        if fault in ("ui_iot", "ingest_iot", "broker"):
            pid = self.stack.children().get(fault)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        elif fault == "broker_hang":
            pid = self.stack.children().get("broker")
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
                await asyncio.sleep(10)
                os.kill(pid, signal.SIGCONT)
        elif fault == "replica":
            assert self.stack.replica is not None
            self.stack.replica.kill()
            self.stack.replica.wait()
            await asyncio.sleep(1)
            self.stack.start_replica()
        elif fault == "postgres":
            pid = self.stack.postmaster_pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(1)
            await asyncio.to_thread(self._restart_postgres)
        await asyncio.sleep(1)  # let the failure be noticed before asking for health
        await wait_for(self.stack.healthy, 120, f"recovery from {fault}")
        return time.monotonic() - started

    def _restart_postgres(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                self.stack.postgres.ensure_running()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # --- the run and its checks ---------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        print(
            f"chaos soak: seed {self.seed}, {self.duration:.0f}s, {len(self.devices)} devices, "
            f"home {self.stack.home}",
            flush=True,
        )
        try:
            await self.set_up()
            async with asyncio.TaskGroup() as tasks:
                for device in self.devices:
                    tasks.create_task(self.run_device(device))
                tasks.create_task(self.operators())
                sse = tasks.create_task(self.sse_client())
                await self.faults()
                await wait_for(self.stack.healthy, 60, "a healthy stack after the faults")
                self.stopping.set()
                try:
                    result = await self.check()
                finally:
                    self.done.set()
                    sse.cancel()
        finally:
            await asyncio.to_thread(self.stack.stop)
        leftovers = self.stack.leftovers()
        result["invariants"]["nothing is left running"] = not leftovers
        if leftovers:
            result["problems"].append(f"left running: {leftovers}")
        return result

    async def check(self) -> dict[str, Any]:
        problems: list[str] = list(self.tally.violations)
        conn = await asyncpg.connect(self.stack.database_url)
        try:
            # Settle: every device acknowledged and synced to its last desired version.
            async def settled() -> bool:
                if any(d.pending is not None for d in self.devices):
                    return False
                behind = await conn.fetchval(
                    """SELECT count(*) FROM device_state
                       WHERE tenant_id = $1 AND reported_version < desired_version""",
                    TENANT,
                )
                job_done = self.job_id is None or await conn.fetchval(
                    "SELECT status IN ('done', 'failed') FROM fleet_jobs WHERE job_id = $1::uuid",
                    self.job_id,
                )
                return behind == 0 and bool(job_done)

            settle_s = await wait_for(settled, 120, "the fleet settling")
            print(f"[{self.now():6.1f}s] settled in {settle_s:.1f}s", flush=True)
            history = await conn.fetch(
                """SELECT device_id, (patch->>'n')::int AS n, version FROM twin_history
                   WHERE tenant_id = $1 AND kind = 'reported' ORDER BY id""",
                TENANT,
            )
            states = {
                row["device_id"]: row
                for row in await conn.fetch(
                    """SELECT device_id, (reported_state->>'n')::int AS n, desired_version,
                              reported_version
                       FROM device_state WHERE tenant_id = $1""",
                    TENANT,
                )
            }
            job = (
                await conn.fetchrow(
                    "SELECT status, matched, written FROM fleet_jobs WHERE job_id = $1::uuid",
                    self.job_id,
                )
                if self.job_id
                else None
            )
            await wait_for(lambda: self._events_sequenced(conn), 30, "twin events sequenced")
            event_ids = [
                row["seq"]
                for row in await conn.fetch(
                    "SELECT seq FROM twin_events WHERE tenant_id = $1 AND seq IS NOT NULL "
                    "ORDER BY seq",
                    TENANT,
                )
            ]

            async def sse_caught_up() -> bool:
                return not event_ids or (bool(self.sse_ids) and self.sse_ids[-1] >= event_ids[-1])

            with contextlib.suppress(AssertionError):
                await wait_for(sse_caught_up, 60, "the SSE client")
        finally:
            await conn.close()

        committed: dict[str, set[tuple[int, int]]] = defaultdict(set)
        applied: dict[str, list[int]] = defaultdict(list)
        for row in history:
            committed[row["device_id"]].add((row["n"], row["version"]))
            applied[row["device_id"]].append(row["n"])
        lost = [
            f"{d.device_id} n={n} v={v}"
            for d in self.devices
            for n, v in d.acked.values()
            if (n, v) not in committed[d.device_id]
        ]
        if lost:
            problems.append(f"{len(lost)} acknowledged reports not committed, e.g. {lost[:3]}")
        regressed = [
            d.device_id
            for d in self.devices
            if any(
                b < a for a, b in zip(applied[d.device_id], applied[d.device_id][1:], strict=False)
            )
            or (d.acked and states[d.device_id]["n"] != max(n for n, _ in d.acked.values()))
        ]
        if regressed:
            problems.append(f"reported state went back on {regressed[:5]}")
        unsynced = [
            d.device_id
            for d in self.devices
            if d.desired_version != states[d.device_id]["desired_version"]
            or states[d.device_id]["reported_version"] != states[d.device_id]["desired_version"]
        ]
        if unsynced:
            problems.append(f"devices without their latest desired version: {unsynced[:5]}")
        seen = [i for i in self.sse_ids if i <= (event_ids[-1] if event_ids else 0)]
        if (
            seen != event_ids[: len(seen)]
            or sorted(set(seen)) != seen
            or len(seen) < len(event_ids)
        ):
            missing = sorted(set(event_ids) - set(seen))
            problems.append(
                f"SSE: saw {len(seen)} of {len(event_ids)} event ids in order "
                f"(missing e.g. {missing[:5]}, duplicates {len(seen) - len(set(seen))})"
            )
        job_ok = job is None or (
            job["status"] == "done"
            and job["matched"] == len(self.devices)
            and job["written"] == len(self.devices)
        )
        if not job_ok:
            problems.append(f"bulk job ended as {dict(job) if job else None}")
        invariants = {
            "every acknowledged report committed as acknowledged": not lost,
            "no reported state went back to an older report": not regressed,
            "every device holds its latest desired version": not unsynced,
            "the SSE client saw every event id in order": not any(
                p.startswith("SSE") for p in problems
            ),
            "no 5xx outside a fault window, only 503 inside": not self.tally.violations,
            "the bulk job finished with the right counts": job_ok and job is not None,
        }
        acked = sum(len(d.acked) for d in self.devices)
        return {
            "seed": self.seed,
            "duration_s": self.duration,
            "devices": len(self.devices),
            "faults": dict(self.injected),
            "worst_recovery_s": {k: round(max(v), 1) for k, v in self.tally.recovery.items()},
            "operations": {
                "reports acknowledged": acked,
                "reports sent (with resends)": self.tally.reports_sent,
                "resends": self.tally.resends,
                "desired writes": self.tally.desired_writes,
                "events seen over SSE": len(self.sse_ids),
                "HTTP results": dict(self.tally.http),
            },
            "invariants": invariants,
            "problems": problems,
        }

    async def _events_sequenced(self, conn: asyncpg.Connection) -> bool:
        unsequenced = await conn.fetchval(
            "SELECT count(*) FROM twin_events WHERE tenant_id = $1 AND seq IS NULL", TENANT
        )
        return not unsequenced


def render_report(result: dict[str, Any], command: str) -> str:
    lines = [
        "# Reliability: the chaos soak",
        "",
        "`make soak` runs the whole stack (`iotcloud up`: embedded PostgreSQL, Mosquitto with",
        "the auth plugin, ui_iot, ingest_iot) and a second ingest_iot replica under load:",
        "devices that follow the contract of docs/devices.md, operators writing desired state",
        "one device at a time and once for the whole fleet, and an SSE client resuming with",
        "Last-Event-ID. Faults come in shuffled rounds: SIGKILL of ui_iot, ingest_iot, the",
        "broker, the replica and PostgreSQL (restarted), and the broker stopped (SIGSTOP) for",
        "10 s. `make test` runs 80 s of it with a fixed seed (tests/chaos/test_soak.py). This",
        "file is the report of the last `make soak`.",
        "",
        f"`{command}` on this project's machine (2 shared cores, 24 GiB).",
        "",
        f"- seed {result['seed']}, {result['duration_s']:.0f} s, {result['devices']} devices",
        "- faults injected: "
        + ", ".join(f"{name} x{count}" for name, count in sorted(result["faults"].items())),
        "",
        "| part | worst recovery (s) |",
        "|---|---|",
        *(f"| {name} | {secs} |" for name, secs in sorted(result["worst_recovery_s"].items())),
        "",
        "Operations:",
        "",
        *(f"- {name}: {value}" for name, value in result["operations"].items()),
        "",
        "Invariants:",
        "",
        *(f"- {'held' if ok else 'BROKEN'}: {name}" for name, ok in result["invariants"].items()),
    ]
    if result["problems"]:
        lines += ["", "Problems:", "", *(f"- {p}" for p in result["problems"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    home = Path(tempfile.mkdtemp(prefix="iotcloud-soak-"))
    soak = Soak(duration=args.duration, seed=seed, devices=args.devices, home=home)
    result = asyncio.run(soak.run())
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if args.report is not None:
        command = f"python -m tests.chaos.soak --duration {args.duration:.0f} --seed {seed}"
        args.report.write_text(render_report(result, command))
    return 0 if not result["problems"] and all(result["invariants"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
