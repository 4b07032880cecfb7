"""One report batch in PostgreSQL: what the bridge's transaction costs, what the triggers on
its UPDATE add (the twin events of migration 009, the pending count of 010), and what the
per-row trigger that 009 replaced cost.

``apply_reports`` — the bridge's own code: lock the twins, apply the rules, write the twins
and their history — on batches of 500 reports from 500 devices, each in its own transaction
and committed: with every trigger as migrated, with those two disabled, and with migration
007's per-row twin-event trigger in their place. For each: the time per batch and
PostgreSQL's CPU per report (server and backends).

    .venv/bin/python bench/report_batch.py [--batches 40] [--size 500]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from harness import machine, percentile, postmaster_pid, scratch, tree_cpu_seconds

from shared import db, twin
from shared.services.history import Actor
from shared.services.report_batches import IncomingReport, apply_reports

TENANT = "bench"
UPDATE_TRIGGERS = ("device_state_twin_event_update", "device_state_count_status")


async def run(conn: db.Connection, server: int, batches: int, size: int) -> tuple[float, float]:
    """p50 milliseconds per batch, and PostgreSQL's microseconds of CPU per report."""
    durations = []
    spent_before = tree_cpu_seconds(server)
    for sample in range(batches):
        reading = {"temperature_c": 21.5, "sample": sample}
        payload = orjson.dumps({"reported": reading, "version": 0})
        reports = [IncomingReport(TENANT, f"rb-{n:05d}", payload) for n in range(size)]
        started = time.perf_counter()
        async with conn.transaction():
            await apply_reports(conn, reports, limits=twin.Limits(), actor=Actor.device())
        durations.append(time.perf_counter() - started)
    spent = tree_cpu_seconds(server) - spent_before
    return 1000 * percentile(durations, 0.5), 1e6 * spent / (batches * size)


# Migration 007's twin-event trigger, which 009 replaced: a PL/pgSQL call, an INSERT and a
# NOTIFY per changed row.
ROW_TRIGGER = """
CREATE FUNCTION bench_record_twin_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO twin_events (tenant_id, device_id, kind, desired_version, reported_version,
                             last_seen)
    VALUES (NEW.tenant_id, NEW.device_id, 'twin', NEW.desired_version,
            NEW.reported_version, NEW.last_seen);
    PERFORM pg_notify('iot_twin_event', '');
    RETURN NULL;
END $$;
CREATE TRIGGER bench_twin_event_per_row
    AFTER UPDATE ON device_state
    FOR EACH ROW
    WHEN (NEW.desired_version IS DISTINCT FROM OLD.desired_version
          OR NEW.reported_version IS DISTINCT FROM OLD.reported_version
          OR NEW.shadow_updated_at IS DISTINCT FROM OLD.shadow_updated_at
          OR (OLD.last_seen IS NULL AND NEW.last_seen IS NOT NULL)
          OR NEW.last_seen > OLD.last_seen + interval '5 minutes')
    EXECUTE FUNCTION bench_record_twin_event();
"""


async def main(batches: int, size: int) -> None:
    print(f"report batch benchmark on {machine()}")
    async with scratch(with_broker=False) as lab:
        await lab.tenant(TENANT)
        conn = await db.connect(lab.database_url, application_name="bench")
        try:
            await conn.execute(
                """INSERT INTO devices (device_id, tenant_id, token_hash)
                   SELECT 'rb-' || lpad(i::text, 5, '0'), $1, sha256(i::text::bytea)
                   FROM generate_series(0, $2 - 1) AS i""",
                TENANT,
                size,
            )
            await conn.execute(
                "INSERT INTO device_state (device_id, tenant_id) "
                "SELECT device_id, tenant_id FROM devices"
            )
            server = await postmaster_pid(conn)
            await run(conn, server, 5, size)  # warm-up: plans cached, pages in memory
            figures = {"as migrated": await run(conn, server, batches, size)}
            for trigger in UPDATE_TRIGGERS:
                await conn.execute(f"ALTER TABLE device_state DISABLE TRIGGER {trigger}")
            figures["without the UPDATE's two triggers"] = await run(conn, server, batches, size)
            await conn.execute(ROW_TRIGGER)
            figures["with 007's per-row twin-event trigger"] = await run(
                conn, server, batches, size
            )
        finally:
            await conn.close()
    print(f"report batch: {batches} transactions of {size} reports, apply_reports and commit")
    for name, (milliseconds, cpu) in figures.items():
        print(
            f"  {name:<40} p50 {milliseconds:6.1f} ms per batch,  "
            f"PostgreSQL {cpu:5.1f} us per report"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--size", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.batches, args.size))
