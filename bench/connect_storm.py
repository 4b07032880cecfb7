"""Connect storm: N devices connect at once to our broker, which authenticates each one
against PostgreSQL, beside the same Mosquitto binary accepting anonymous connections (the
ceiling: connections it does not authenticate), in the same run, with the same client code
and the same number of connects in flight.

The devices are provisioned the real way (``provision_fleet``: the batch registry path, a
token each). The client is a few lines of raw asyncio: a hand-built MQTT 3.1.1 CONNECT
(user name = client id = device id, password = token, clean session) and a wait for
CONNACK 0, so the broker is what is measured and not a Python MQTT library. Every
connection stays open until the phase ends, then all are closed. Phases: anonymous, our
broker with its credential cache cold, our broker again after every device disconnected
(the reconnect storm that follows a network blip: the plugin's cache is warm), anonymous
again; the ceiling is the mean of the two anonymous phases. The machine is shared, so
there are several rounds (each with its own devices, so each finds the cache cold) and the
median ratio is the figure.

    .venv/bin/python bench/connect_storm.py [--devices 5000] [--in-flight 250] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import (
    cpu_seconds,
    machine,
    percentile,
    ratio,
    scratch,
)
from tests.support import free_port

from iotcloud.embedded import find_mosquitto
from iotcloud.provisioning import provision_fleet
from shared import db

TENANT = "bench"
CONNACK_ACCEPTED = bytes([0x20, 2, 0, 0])
KEEPALIVE_S = 600  # no PINGREQ needed while a phase lasts


def raise_open_files_limit() -> int:
    """As many descriptors as the hard limit allows, for us and the brokers we start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def remaining_length(size: int) -> bytes:
    out = bytearray()
    while True:
        size, digit = divmod(size, 128)
        out.append(digit | (0x80 if size else 0))
        if not size:
            return bytes(out)


def connect_packet(device_id: str, token: str) -> bytes:
    def field(value: bytes) -> bytes:
        return len(value).to_bytes(2, "big") + value

    body = (
        field(b"MQTT")
        + bytes([4, 0b11000010])  # protocol level 4; user name, password, clean session
        + KEEPALIVE_S.to_bytes(2, "big")
        + field(device_id.encode())
        + field(device_id.encode())
        + field(token.encode())
    )
    return bytes([0x10]) + remaining_length(len(body)) + body


class ConnectProtocol(asyncio.Protocol):
    """Sends one CONNECT, resolves ``accepted`` at CONNACK 0, then holds the connection."""

    def __init__(self, packet: bytes, accepted: asyncio.Future[None]) -> None:
        self.packet = packet
        self.accepted = accepted
        self.received = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.packet)

    def data_received(self, data: bytes) -> None:
        if self.accepted.done():
            return
        self.received += data
        if len(self.received) >= 4:
            if self.received[:4] == CONNACK_ACCEPTED:
                self.accepted.set_result(None)
            else:
                self.accepted.set_exception(RuntimeError(f"CONNACK {self.received[:4]!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.accepted.done():
            self.accepted.set_exception(RuntimeError(f"connection closed before CONNACK: {exc}"))


def backends_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


@dataclass
class Phase:
    name: str
    seconds: float
    broker_cpu_s: float
    client_cpu_s: float
    postgres_cpu_s: float
    latencies: list[float]
    presence_s: float | None  # until the database shows every device connected
    listen_overflows: int  # handshakes the kernel dropped: the broker did not accept in time


def listen_overflows() -> int:
    """TcpExt ListenOverflows of this network namespace (``/proc/net/netstat``)."""
    text = Path("/proc/net/netstat").read_text()
    rows = [row.split() for row in text.splitlines() if row.startswith("TcpExt:")]
    return int(dict(zip(rows[0], rows[1], strict=True)).get("ListenOverflows", 0))


async def connected_devices(conn: db.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM device_state WHERE connected"))


async def wait_connected(conn: db.Connection, count: int, timeout: float = 120) -> float:
    started = time.perf_counter()
    while (await connected_devices(conn)) != count:
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"presence never reached {count} connected devices")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def storm(
    port: int,
    packets: list[bytes],
    in_flight: int,
    *,
    broker_pid: int,
    database_backends: list[int],
    name: str,
    presence: db.Connection | None,
    while_held: Callable[[], None] | None = None,
) -> Phase:
    """Every packet's connection up and accepted; all held to the end, then closed. With
    ``presence`` (our broker), also waits for the plugin to write every connect and then
    every disconnect, so no phase pays for the previous one's presence writes.
    ``while_held`` runs once every connection is up, before any is closed."""
    loop = asyncio.get_running_loop()
    held: list[asyncio.Transport] = []
    latencies: list[float] = []
    pending: Iterator[bytes] = iter(packets)

    async def worker() -> None:
        for packet in pending:
            begun = time.perf_counter()
            accepted: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.create_connection(
                lambda packet=packet, accepted=accepted: ConnectProtocol(packet, accepted),  # type: ignore[misc]
                "127.0.0.1",
                port,
            )
            held.append(transport)
            await asyncio.wait_for(accepted, 30)
            latencies.append(time.perf_counter() - begun)

    broker_cpu, client_cpu = cpu_seconds(broker_pid), time.process_time()
    postgres_cpu = backends_cpu_seconds(database_backends)
    overflows = listen_overflows()
    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as workers:
            for _ in range(in_flight):
                workers.create_task(worker())
        elapsed = time.perf_counter() - started
        phase = Phase(
            name,
            elapsed,
            cpu_seconds(broker_pid) - broker_cpu,
            time.process_time() - client_cpu,
            backends_cpu_seconds(database_backends) - postgres_cpu,
            latencies,
            None,
            listen_overflows() - overflows,
        )
        assert len(held) == len(packets)
        if presence is not None:
            phase.presence_s = elapsed + await wait_connected(presence, len(packets))
        if while_held is not None:
            while_held()
    finally:
        for transport in held:
            transport.close()
    if presence is not None:
        await wait_connected(presence, 0)
    # Let the broker see every disconnect before the next phase reuses the client ids.
    await asyncio.sleep(1)
    return phase


@contextlib.contextmanager
def anonymous_broker(ours: Path, home: Path) -> Iterator[tuple[int, int]]:
    """The same Mosquitto binary with our broker's configuration (``ours``) less the plugin,
    anyone accepted, its store elsewhere: (port, pid)."""
    binary = find_mosquitto()
    assert binary is not None, "mosquitto is needed"
    (home / "data").mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = []
    for setting in ours.read_text().splitlines():
        key = setting.split(" ", 1)[0]
        if key.startswith("plugin"):
            continue
        lines.append(
            {
                "allow_anonymous": "allow_anonymous true",
                "listener": f"listener {port} 127.0.0.1",
                "persistence_location": f"persistence_location {home / 'data'}/",
            }.get(key, setting)
        )
    config = home / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    with (home / "mosquitto.log").open("ab") as log:
        process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"anonymous mosquitto did not start: see {home}")
            time.sleep(0.05)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)


def line(phase: Phase, devices: int, ceiling: float | None = None, goal: str = "") -> str:
    ms = [v * 1000 for v in phase.latencies]
    text = (
        f"    {phase.name:<38} {phase.seconds:6.2f} s {devices / phase.seconds:7,.0f} conn/s"
        f"  connect p50 {percentile(ms, 0.5):5.1f} ms p99 {percentile(ms, 0.99):6.1f} ms"
        f"  CPU s: broker {phase.broker_cpu_s:4.2f}, its PostgreSQL backends "
        f"{phase.postgres_cpu_s:4.2f}, client {phase.client_cpu_s:4.2f}"
        f"  listen overflows {phase.listen_overflows}"
    )
    if ceiling is not None:
        text += f"  {ratio(phase.seconds, ceiling)} the anonymous time{goal}"
    if phase.presence_s is not None:
        text += f"; all connected in the database after {phase.presence_s:.2f} s"
    return text


async def main(devices: int, in_flight: int, rounds: int) -> dict[str, float]:
    limit = raise_open_files_limit()
    if limit < devices + 100:
        raise SystemExit(f"RLIMIT_NOFILE is {limit}: too low for {devices} connections")
    print(f"connect storm benchmark on {machine()}; RLIMIT_NOFILE {limit}")
    results: list[tuple[float, float, float]] = []
    async with scratch() as lab:
        await lab.tenant(TENANT)
        started = time.perf_counter()
        # Each round its own devices, so each round's first authenticated storm finds the
        # plugin's cache cold without restarting the broker.
        tokens = await provision_fleet(
            lab.database_url,
            tenant_id=TENANT,
            device_ids=[f"cs{r}-{i:06d}" for r in range(rounds) for i in range(1, devices + 1)],
        )
        provisioned = time.perf_counter() - started
        print(
            f"connect storm: {devices:,} devices a round ({rounds * devices:,} provisioned in "
            f"{provisioned:.1f} s), {in_flight} connects in flight, every connection held until "
            "all are up; ceiling = mean of the round's two anonymous phases",
            flush=True,
        )
        packets = [connect_packet(device_id, token) for device_id, token in tokens.items()]
        conn = await db.connect(lab.database_url, application_name="bench")
        # The plugin's connections: the server is shared, so not the postmaster's tree.
        backends = [
            row["pid"]
            for row in await conn.fetch(
                """SELECT pid FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid()"""
            )
        ]
        assert lab.broker.process is not None
        ours = lab.broker.process.pid
        config = lab.broker.embedded.config_file
        with anonymous_broker(config, lab.home / "anonymous") as (anon_port, anon_pid):
            for r in range(rounds):
                fleet = packets[r * devices : (r + 1) * devices]

                async def phase(port: int, pid: int, name: str, fleet: list[bytes]) -> Phase:
                    return await storm(
                        port,
                        fleet,
                        in_flight,
                        broker_pid=pid,
                        database_backends=backends,
                        name=name,
                        presence=conn if pid == ours else None,
                    )

                anonymous = await phase(anon_port, anon_pid, "anonymous (ceiling)", fleet)
                cold = await phase(lab.broker.port, ours, "authenticated, cold", fleet)
                warm = await phase(
                    lab.broker.port, ours, "authenticated, reconnect (cache warm)", fleet
                )
                again = await phase(anon_port, anon_pid, "anonymous again (ceiling)", fleet)
                ceiling = (anonymous.seconds + again.seconds) / 2
                print(f"  round {r + 1}: ceiling {ceiling:.2f} s")
                print(line(anonymous, devices))
                print(line(again, devices))
                print(line(cold, devices, ceiling, " (goal <= 2.0x)"))
                print(line(warm, devices, ceiling), flush=True)
                results.append((ceiling, cold.seconds, warm.seconds))
        await conn.close()
    ratios = sorted(cold / ceiling for ceiling, cold, _ in results)
    warm_ratios = sorted(warm / ceiling for ceiling, _, warm in results)
    median = ratios[len(ratios) // 2]
    print(
        f"connect storm, {devices:,} devices: authenticated / anonymous, cold cache "
        + ", ".join(f"{x:.2f}x" for x in ratios)
        + f" (median {median:.2f}x, goal <= 2.0x); reconnect with the cache warm "
        + ", ".join(f"{x:.2f}x" for x in warm_ratios)
    )
    return {"ratio": median, "reconnect_ratio": warm_ratios[len(warm_ratios) // 2]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.in_flight, args.rounds))
