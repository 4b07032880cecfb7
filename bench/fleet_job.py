"""Bulk desired job: how long one merge patch takes on N devices (default 100,000).

Creates a scratch database on the test server (``TEST_DATABASE_URL`` or the embedded one),
adds N devices with one INSERT ... SELECT, then runs ``iotcloud fleet set-desired`` on all of
them (the same code path as a ui_iot replica's runner) and prints devices per second.

    .venv/bin/python bench/fleet_job.py [--devices 100000] [--workers 4] [--batch-size 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "services")]

from tests.support import build_template, drop_template, fresh_database, server_url  # noqa: E402

SEED = """
WITH n AS (SELECT i FROM generate_series(1, $1::int) AS i)
INSERT INTO devices (device_id, tenant_id, name, tags, token_hash)
SELECT 'b-' || lpad(i::text, 7, '0'), 'bench', 'unit ' || i,
       jsonb_build_object('site', 'site-' || (i % 100)),
       sha256(convert_to('b-' || i::text, 'UTF8'))
FROM n
"""


async def main(devices: int, workers: int, batch_size: int) -> None:
    server = server_url()
    await build_template(server)
    try:
        async with fresh_database(server) as url:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('bench', 'b')")
                await conn.execute(SEED, devices)
                await conn.execute(
                    """INSERT INTO device_state (device_id, tenant_id, last_seen)
                       SELECT device_id, tenant_id, now() FROM devices"""
                )
                await conn.execute("VACUUM ANALYZE")
            finally:
                await conn.close()
            started = time.perf_counter()
            cli = await asyncio.create_subprocess_exec(
                *[
                    sys.executable,
                    "-m",
                    "iotcloud.cli",
                    "fleet",
                    "set-desired",
                    "--tenant",
                    "bench",
                    "--desired",
                    '{"firmware": {"version": "2.4.1", "channel": "stable"}}',
                    "--workers",
                    str(workers),
                    "--batch-size",
                    str(batch_size),
                ],
                env={**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT / "services")},
            )
            if await cli.wait() != 0:
                raise SystemExit(f"iotcloud fleet set-desired exited with {cli.returncode}")
            elapsed = time.perf_counter() - started
            conn = await asyncpg.connect(url)
            try:
                written = await conn.fetchval(
                    "SELECT count(*) FROM device_state WHERE desired_version = 1"
                )
            finally:
                await conn.close()
    finally:
        await drop_template(server)
    print(
        f"bulk desired job: {written} of {devices} devices written in {elapsed:.1f} s "
        f"({written / elapsed:,.0f} devices/s; workers={workers}, batch={batch_size})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.workers, args.batch_size))
