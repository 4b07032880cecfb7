"""Fleet scale: operator reads on a 100,000- and then a 1,000,000-device tenant.

Devices are loaded with COPY (twin event triggers off for the load only; the device-count
triggers of migration 008 fire always), a third of them pending, then through a real
``ui_iot``: ``GET .../twin`` p50/p99 over random devices, one page of pending devices
(``GET /customer/devices?sync_status=pending``), the sync counts (``GET
/customer/fleet/summary``, checked exact); each API figure next to the same query run
straight on the database (its floor), the counts also next to a bare ``count(*)`` of the
tenant's rows, and the resident memory of both services at each size. Then the counts once
more after every twin row has been written since the last vacuum (what a steady stream of
reports leaves: index-only scans then check the heap).

    .venv/bin/python bench/fleet_scale.py [--sizes 100000,1000000] [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from harness import machine, operator_headers, percentile, scratch

from shared import db
from shared.repositories import fleet as fleet_repo

TENANT = "bench"

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
    """A third pending. Each desired state counts as already published: the running
    ingest_iot's publisher would otherwise send a million retained messages during the
    reads, which measures that, not them."""
    desired, reported = {"interval_s": 60}, {"interval_s": 30}
    for i in range(first, last + 1):
        version = 2 if i % 3 == 0 else 1
        yield (f"f-{i:07d}", TENANT, desired, version, reported, 1, version, now, now)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def load(url: str, first: int, last: int) -> float:
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


async def main(sizes: list[int], requests: int) -> None:
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
            conn = await db.connect(lab.database_url, application_name="bench")
            loaded = 0
            async with httpx.AsyncClient(
                base_url=ui.url, headers=operator_headers(TENANT), timeout=30
            ) as api:
                for size in sizes:
                    seconds = await load(lab.database_url, loaded + 1, size)
                    loaded = size
                    figures = await measure(api, conn, size, requests)
                    after = await measure_after_writes(api, conn, size, requests)
                    memory = f"ui_iot {rss_mib(ui.process.pid):.0f} MiB, ingest_iot "
                    memory += f"{rss_mib(ingest.process.pid):.0f} MiB"
                    lines.append(
                        f"  {size:>9,} devices (loaded in {seconds:.0f} s); RSS {memory}\n"
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
                        f"SQL alone p99 {ms(after['summary_sql'], 0.99)}"
                    )
                    print(lines[-1], flush=True)
            await conn.close()
        finally:
            ui.stop()
            ingest.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main([int(size) for size in args.sizes.split(",")], args.requests))
