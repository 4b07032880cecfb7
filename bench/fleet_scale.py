"""Fleet scale: operator reads on a 100,000- and then a 1,000,000-device tenant registered
through the batch API, and the memory of the broker and the services at each size.

The devices are registered as an operator registers a fleet: ``POST /customer/devices/batch``
on the real ``ui_iot``, 1,000 per call from a few concurrent clients
(``harness.provision_batches``), each with a name, a ``site`` tag (100 sites) and the
provision token the API generates (only its SHA-256 is stored); the time is printed. Their
twins are then given the state a fleet's reports would have left over time, by set-based
UPDATEs of ``device_state``: a third pending, the rest synced, every desired state counted
as already published (a running ``ingest_iot`` would otherwise send a million retained
messages during the reads, which measures that, not them), ``last_seen`` spread over the
last 50 minutes (none stale). The twin events and the publisher's wake-up are off for those
UPDATEs only (``session_replication_role = replica``); the fleet counters' triggers fire
always (migrations 008, 010, 012).

Once ``ui_iot``'s event hub has numbered the registrations' twin events (one per device) and
the tables are vacuumed, through the real ``ui_iot``: ``GET .../twin`` p50/p99 over random
devices, one page of pending devices (``GET /customer/devices?sync_status=pending``), the
sync counts (``GET /customer/fleet/summary``, checked exact); each API figure next to the
same query run straight on the database (its floor), the counts also next to a bare
``count(*)`` of the tenant's rows. Then the counts once more after every twin row has been
written since the last vacuum (what a steady stream of reports leaves: index-only scans then
check the heap). Last, a few hundred of the devices connect to the broker (Mosquitto with
our auth plugin) with their tokens, client id = device id (``connect_storm``'s raw CONNECT
client), and the resident memory (``VmRSS``) of the broker, ``ui_iot`` and ``ingest_iot`` is
read while they are connected; they disconnect before the next size.

    .venv/bin/python bench/fleet_scale.py [--sizes 100000,1000000] [--requests 1000]
        [--clients 4] [--connected 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
from connect_storm import connect_packet, raise_open_files_limit, storm
from harness import (
    BATCH_SIZE,
    Scratch,
    machine,
    operator_headers,
    percentile,
    provision_batches,
    rss_mib,
    scratch,
)

from shared import db
from shared.repositories import events as events_repo
from shared.repositories import fleet as fleet_repo

TENANT = "bench"
SITES = 100
SHAPE_CHUNK = 100_000  # twins per UPDATE: bounds the statement's transition tables


def device_id(number: int) -> str:
    return f"f-{number:07d}"


def device_entry(number: int) -> dict[str, Any]:
    """One device of a batch call, as an operator's import would send it."""
    return {
        "device_id": device_id(number),
        "name": f"unit {number}",
        "tags": {"site": f"site-{number % SITES}"},
    }


async def provision(
    url: str, first: int, last: int, clients: int, connected: int
) -> tuple[float, dict[str, str]]:
    """Devices ``first`` to ``last`` through the batch API: (seconds, {device_id: token} of
    ``connected`` of them spread over the range, to connect to the broker)."""
    step = max(1, (last - first + 1) // connected)
    started = time.perf_counter()
    tokens = await provision_batches(
        url,
        TENANT,
        range(first, last + 1),
        device_entry,
        clients=clients,
        keep=lambda device: (int(device[2:]) - first) % step == 0,
    )
    seconds = time.perf_counter() - started
    return seconds, dict(list(tokens.items())[:connected])


async def shape_twins(url: str, first: int, last: int) -> float:
    """The twin state reports would have left on devices ``first`` to ``last``: set-based
    UPDATEs, then VACUUM ANALYZE (the twin events' table too) and a CHECKPOINT."""
    started = time.perf_counter()
    conn = await db.connect(url, application_name="bench")
    try:
        await conn.execute("SET session_replication_role = replica")  # no twin events, NOTIFY
        for start in range(first, last + 1, SHAPE_CHUNK):
            end = min(last, start + SHAPE_CHUNK - 1)
            await conn.execute(
                """UPDATE device_state SET
                       desired_state = '{"interval_s": 60}',
                       desired_version = v.version,
                       published_version = v.version,
                       reported_state = '{"interval_s": 30}',
                       reported_version = 1,
                       last_seen = now() - make_interval(secs => v.number % 3000),
                       shadow_updated_at = now()
                   FROM (SELECT device_id, number, CASE WHEN number % 3 = 0 THEN 2 ELSE 1 END
                         FROM (SELECT device_id, substr(device_id, 3)::int AS number
                               FROM device_state
                               WHERE tenant_id = $1 AND device_id BETWEEN $2 AND $3) n
                        ) v (device_id, number, version)
                   WHERE device_state.device_id = v.device_id""",
                TENANT,
                device_id(start),
                device_id(end),
            )
        # The registrations' twin events too, or autovacuum works through them during the reads.
        for table in ("devices", "device_state", "twin_events"):
            await conn.execute(f"VACUUM ANALYZE {table}")
        # The WAL flushed now, not by a checkpoint in the middle of the measurements.
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def events_sequenced(conn: db.Connection, timeout: float = 600) -> float:
    """Seconds until ``ui_iot``'s event hub has numbered every twin event (a registration
    records one per device), so the reads do not share the machine with that catch-up."""
    started = time.perf_counter()
    while await events_repo.has_unsequenced(conn):
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"twin events still unsequenced after {timeout:.0f} s")
        await asyncio.sleep(0.2)
    return time.perf_counter() - started


async def timed(calls: int, call: object) -> list[float]:
    values = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()  # type: ignore[operator]
        values.append(time.perf_counter() - started)
    return values


def ms(values: list[float], fraction: float) -> str:
    return f"{percentile(values, fraction) * 1000:7.2f} ms"


def summary_calls(
    api: httpx.AsyncClient, conn: db.Connection, size: int
) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """The summary through the API (checked exact) and its statement straight on the database."""

    async def summary() -> None:
        answer = await api.get("/customer/fleet/summary")
        answer.raise_for_status()
        pending = size // 3
        assert answer.json() == {
            "total": size,
            "synced": size - pending,
            "pending": pending,
            "stale": 0,
            "connected": 0,
            "rejected": 0,
        }

    async def summary_sql() -> None:
        await fleet_repo.summary(conn, tenant_id=TENANT, stale_after=timedelta(hours=1))

    return summary, summary_sql


def summary_samples(requests: int) -> int:
    """Enough summaries that the p99 is not simply the slowest of a handful."""
    return max(30, requests // 10)


async def measure_after_writes(
    api: httpx.AsyncClient, conn: db.Connection, size: int, requests: int
) -> dict[str, Any]:
    """The summary in the state a steady stream of reports leaves between two vacuums: every
    twin row written (last_seen moved, statuses unchanged), so no page is all-visible and an
    index-only scan checks each entry in the heap. Autovacuum is held off meanwhile, so the
    figure is this state and not a race with a vacuum (the next load vacuums)."""
    started = time.perf_counter()
    await conn.execute("ALTER TABLE device_state SET (autovacuum_enabled = false)")
    try:
        await conn.execute("UPDATE device_state SET last_seen = now()")
        written = time.perf_counter() - started
        summary, summary_sql = summary_calls(api, conn, size)
        return {
            "written_s": written,
            "summary": await timed(summary_samples(requests), summary),
            "summary_sql": await timed(summary_samples(requests), summary_sql),
        }
    finally:
        await conn.execute("ALTER TABLE device_state RESET (autovacuum_enabled)")


async def measure(
    api: httpx.AsyncClient, conn: db.Connection, size: int, requests: int
) -> dict[str, list[float]]:
    rng = random.Random(size)

    async def twin() -> None:
        device = f"f-{rng.randint(1, size):07d}"
        (await api.get(f"/customer/devices/{device}/twin")).raise_for_status()

    async def twin_sql() -> None:
        device = f"f-{rng.randint(1, size):07d}"
        await conn.fetchrow(
            """SELECT s.*, d.model_id FROM device_state s JOIN devices d USING (device_id)
               WHERE s.device_id = $1 AND s.tenant_id = 'bench'""",
            device,
        )

    async def pending() -> None:
        answer = await api.get("/customer/devices", params={"sync_status": "pending", "limit": 50})
        answer.raise_for_status()
        assert len(answer.json()["items"]) == 50

    async def pending_sql() -> None:
        await conn.fetch(
            """SELECT d.device_id FROM devices d JOIN device_state s USING (device_id)
               WHERE d.tenant_id = 'bench' AND s.tenant_id = 'bench' AND d.revoked_at IS NULL
                 AND s.last_seen >= now() - interval '1 hour'
                 AND s.desired_version > s.reported_version
               ORDER BY d.device_id LIMIT 50"""
        )

    summary, summary_sql = summary_calls(api, conn, size)

    async def count_sql() -> None:
        # What counting the tenant's twin rows alone costs, no status at all.
        await conn.fetchval("SELECT count(*) FROM device_state WHERE tenant_id = 'bench'")

    counts = summary_samples(requests)
    return {
        "twin": await timed(requests, twin),
        "twin_sql": await timed(requests, twin_sql),
        "pending": await timed(requests // 10, pending),
        "pending_sql": await timed(requests // 10, pending_sql),
        "summary": await timed(counts, summary),
        "summary_sql": await timed(counts, summary_sql),
        "count_sql": await timed(counts, count_sql),
    }


async def connected_memory(
    lab: Scratch, conn: db.Connection, tokens: dict[str, str], pids: dict[str, int]
) -> tuple[dict[str, float], float]:
    """Every device of ``tokens`` connected to the broker with its token: the RSS of each
    process in ``pids`` while they are (MiB), and the seconds they took to connect. Returns
    once the broker has recorded them all disconnected again."""
    held: dict[str, float] = {}
    phase = await storm(
        lab.broker.port,
        [connect_packet(device, token) for device, token in tokens.items()],
        min(250, len(tokens)),
        broker_pid=pids["broker"],
        database_backends=[],
        name="connected",
        presence=conn,
        while_held=lambda: held.update({name: rss_mib(pid) for name, pid in pids.items()}),
    )
    return held, phase.seconds


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def main(sizes: list[int], requests: int, clients: int, connected: int) -> None:
    raise_open_files_limit()  # before the broker starts: it inherits the limit
    print(f"fleet scale benchmark on {machine()}")
    lines = []
    async with scratch(with_broker=True) as lab:
        await lab.tenant(TENANT)
        ui, ingest = lab.service("ui"), lab.service("ingest")
        ui.start()
        ingest.start()
        try:
            await ui.wait_ready()
            await ingest.wait_ready()
            assert ui.process is not None and ingest.process is not None
            assert lab.broker.process is not None
            pids = {
                "broker": lab.broker.process.pid,
                "ui_iot": ui.process.pid,
                "ingest_iot": ingest.process.pid,
            }
            conn = await db.connect(lab.database_url, application_name="bench")
            loaded, provisioning = 0, 0.0
            async with httpx.AsyncClient(
                base_url=ui.url, headers=operator_headers(TENANT), timeout=30
            ) as api:
                for size in sizes:
                    seconds, tokens = await provision(ui.url, loaded + 1, size, clients, connected)
                    provisioning += seconds
                    sequenced = await events_sequenced(conn)
                    shaped = await shape_twins(lab.database_url, loaded + 1, size)
                    added, loaded = size - loaded, size
                    figures = await measure(api, conn, size, requests)
                    after = await measure_after_writes(api, conn, size, requests)
                    idle = rss_mib(pids["broker"])
                    memory, connect_s = await connected_memory(lab, conn, tokens, pids)
                    lines.append(
                        f"  {size:>9,} devices: {added:,} provisioned through POST "
                        f"/customer/devices/batch ({BATCH_SIZE:,} per call, {clients} clients) "
                        f"in {seconds:.1f} s ({added / seconds:,.0f}/s; all {size:,} in "
                        f"{provisioning:.1f} s of provisioning); their twin events sequenced "
                        f"{sequenced:.0f} s later; twins shaped in {shaped:.0f} s; "
                        f"load average {load_average()}\n"
                        f"    GET twin           p50 {ms(figures['twin'], 0.5)}  "
                        f"p99 {ms(figures['twin'], 0.99)}   (goal p99 <= 5 ms)  "
                        f"SQL alone p99 {ms(figures['twin_sql'], 0.99)}\n"
                        f"    pending page (50)  p50 {ms(figures['pending'], 0.5)}  "
                        f"p99 {ms(figures['pending'], 0.99)}   (goal <= 20 ms)   "
                        f"SQL alone p99 {ms(figures['pending_sql'], 0.99)}\n"
                        f"    summary counts     p50 {ms(figures['summary'], 0.5)}  "
                        f"p99 {ms(figures['summary'], 0.99)}   (goal <= 200 ms)  "
                        f"SQL alone p99 {ms(figures['summary_sql'], 0.99)}  "
                        f"count(*) alone p99 {ms(figures['count_sql'], 0.99)}\n"
                        f"    summary, every twin written since the last vacuum "
                        f"({after['written_s']:.0f} s to write):  p50 {ms(after['summary'], 0.5)}  "
                        f"p99 {ms(after['summary'], 0.99)}  "
                        f"SQL alone p99 {ms(after['summary_sql'], 0.99)}\n"
                        f"    RSS with {len(tokens):,} devices connected to the broker (their "
                        f"tokens, connected in {connect_s:.1f} s): broker "
                        f"{memory['broker']:.1f} MiB (idle before {idle:.1f} MiB), ui_iot "
                        f"{memory['ui_iot']:.0f} MiB, ingest_iot {memory['ingest_iot']:.0f} MiB"
                    )
                    print(lines[-1], flush=True)
            await conn.close()
        finally:
            ui.stop()
            ingest.stop()
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4, help="concurrent batch calls")
    parser.add_argument("--connected", type=int, default=300, help="devices on the broker")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    asyncio.run(main(sizes, args.requests, args.clients, args.connected))
