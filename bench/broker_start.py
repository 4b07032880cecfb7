"""Broker start: from spawning Mosquitto with our auth plugin to a device's first CONNACK 0,
with next to no devices registered (the ceiling) and then with 1,000,000, in the same run;
and the broker's resident memory idle at each size and with 5,000 devices connected.

The broker loads nothing per device (it asks the database at each CONNECT), so the million
devices are loaded with COPY (``load``: devices and their twins, a token hash each, the
twin events off for the load); the probe device and the 5,000 that connect are provisioned
the real way (``provision_fleet``, a token each). Each start is a fresh process on the same
store, after a clean stop (SIGTERM) of the previous one.

    .venv/bin/python bench/broker_start.py [--devices 1000000] [--connected 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connect_storm import connect_packet, raise_open_files_limit, storm
from harness import Scratch, machine, rss_mib, scratch

from iotcloud.provisioning import provision_fleet
from shared import db

TENANT = "bench"
PROBE = "start-probe"

DEVICE_COLUMNS = [
    "device_id",
    "tenant_id",
    "name",
    "tags",
    "token_hash",
]
STATE_COLUMNS = [
    "device_id",
    "tenant_id",
    "desired_state",
    "desired_version",
    "reported_state",
    "reported_version",
    "published_version",
    "last_seen",
    "shadow_updated_at",
]


def device_rows(first: int, last: int) -> Iterator[tuple[Any, ...]]:
    for i in range(first, last + 1):
        token_hash = hashlib.sha256(f"f-{i}".encode()).digest()
        yield (
            f"f-{i:07d}",
            TENANT,
            f"unit {i}",
            {"site": f"site-{i % 100}"},
            token_hash,
        )


def state_rows(first: int, last: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    """A third pending, each desired state counted as already published."""
    desired, reported = {"interval_s": 60}, {"interval_s": 30}
    for i in range(first, last + 1):
        version = 2 if i % 3 == 0 else 1
        yield (f"f-{i:07d}", TENANT, desired, version, reported, 1, version, now, now)


async def load(url: str, first: int, last: int) -> float:
    """Devices ``first`` to ``last`` with their twins, by COPY (the twin events off, the
    fleet counters on); the seconds it took."""
    started = time.perf_counter()
    conn = await db.connect(url, application_name="bench")
    try:
        await conn.execute("SET session_replication_role = replica")  # no twin events
        now = datetime.now(UTC)
        for start in range(first, last + 1, 250_000):
            end = min(last, start + 249_999)
            await conn.copy_records_to_table(
                "devices", records=device_rows(start, end), columns=DEVICE_COLUMNS
            )
            await conn.copy_records_to_table(
                "device_state", records=state_rows(start, end, now), columns=STATE_COLUMNS
            )
        await conn.execute("VACUUM ANALYZE devices")
        await conn.execute("VACUUM ANALYZE device_state")
        # The load's WAL flushed now, not by a checkpoint in the middle of the measurements.
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return time.perf_counter() - started


def connack(port: int, packet: bytes) -> bool:
    """One CONNECT; True at CONNACK 0 (False while the broker is not there yet)."""
    try:
        with socket.create_connection(("127.0.0.1", port), 1) as sock:
            sock.sendall(packet)
            return sock.recv(4) == bytes([0x20, 2, 0, 0])
    except OSError:
        return False


def store_bytes(store: Path) -> int:
    return sum(f.stat().st_size for f in store.iterdir())


class Start:
    def __init__(self, lab: Scratch, probe: bytes) -> None:
        argv = lab.broker.embedded.prepare(lab.database_url)
        self.log = (lab.broker.home / "mosquitto.log").open("ab")
        started = time.perf_counter()
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.listening_s = 0.0
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: see {lab.broker.home}")
            if time.perf_counter() - started > 60:
                raise RuntimeError("no CONNACK 0 within 60 s")
            if not self.listening_s:
                try:
                    socket.create_connection(("127.0.0.1", lab.broker.port), 0.2).close()
                    self.listening_s = time.perf_counter() - started
                except OSError:
                    time.sleep(0.005)
                    continue
            if connack(lab.broker.port, probe):
                break
            time.sleep(0.005)
        self.ready_s = time.perf_counter() - started
        lab.broker.process = self.process  # scratch() kills it at the end

    def rss_mib(self) -> float:
        return rss_mib(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


async def measure(lab: Scratch, probe: bytes, packets: list[bytes], registered: int) -> str:
    start = Start(lab, probe)
    try:
        await asyncio.sleep(2)  # idle: the plugin's start-up work done
        idle = start.rss_mib()
        held: list[float] = []
        phase = await storm(
            lab.broker.port,
            packets,
            250,
            broker_pid=start.process.pid,
            database_backends=[],
            name="connect",
            presence=None,
            while_held=lambda: held.append(start.rss_mib()),
        )
    finally:
        start.stop()
    return (
        f"  {registered:>9,} devices registered: listening after {start.listening_s:5.2f} s, "
        f"first CONNACK 0 after {start.ready_s:5.2f} s (goal <= 10 s); RSS idle {idle:5.1f} MiB, "
        f"with {len(packets):,} connected {held[0]:5.1f} MiB (they connected in "
        f"{phase.seconds:.1f} s)"
    )


async def main(devices: int, connected: int) -> None:
    raise_open_files_limit()
    print(f"broker start benchmark on {machine()}")
    async with scratch(with_broker=False) as lab:
        await lab.tenant(TENANT)
        tokens = await provision_fleet(
            lab.database_url,
            tenant_id=TENANT,
            device_ids=[PROBE, *(f"bs-{i:06d}" for i in range(1, connected + 1))],
        )
        probe = connect_packet(PROBE, tokens.pop(PROBE))
        packets = [connect_packet(device_id, token) for device_id, token in tokens.items()]
        lines = [await measure(lab, probe, packets, connected + 1)]
        print(lines[-1], flush=True)
        loaded = await load(lab.database_url, 1, devices)
        print(f"  ({devices:,} more devices loaded with COPY in {loaded:.0f} s)", flush=True)
        lines.append(await measure(lab, probe, packets, devices + connected + 1))
        print(lines[-1], flush=True)
        size = store_bytes(lab.broker.embedded.root / "data")
        print(f"  the broker's saved store after both starts: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--connected", type=int, default=5000)
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.connected))
