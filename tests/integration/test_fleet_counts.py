"""The fleet summary's kept device counts (migration 008): exact after every kind of write,
under concurrent writers, per tenant, for bulk loads with triggers off, from the backfill of
existing data, and with stale and pending following the clock rather than writes."""

from __future__ import annotations

import asyncio
import random
import shutil
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import orjson
import pytest

from shared import db, twin
from shared.repositories import bulk_devices
from shared.services import fleet
from shared.topics import reported_topic
from tests.conftest import Stack, make_settings, running_stack
from tests.integration.test_fleet import add_fleet
from tests.integration.test_fleet_jobs import wait_for_job
from tests.support import Broker, eventually, with_database

_HOUR = timedelta(hours=1)

# Devices straight into the tables, as bulk provisioning and scripts do: ids "<prefix><i>".
_DEVICES_SQL = """
INSERT INTO devices (device_id, tenant_id, token_hash)
SELECT $2 || i, $1, sha256(convert_to($2 || i, 'UTF8'))
FROM generate_series($3::int, $4::int) AS i
"""
_STATE_SQL = """
INSERT INTO device_state (device_id, tenant_id, last_seen)
SELECT $2 || i, $1, now() FROM generate_series($3::int, $4::int) AS i
"""


async def insert_devices(
    conn: asyncpg.Connection, tenant_id: str, prefix: str, first: int, last: int
) -> None:
    await conn.execute(_DEVICES_SQL, tenant_id, prefix, first, last)
    await conn.execute(_STATE_SQL, tenant_id, prefix, first, last)


async def summary_and_truth(
    conn: asyncpg.Connection, tenant_id: str, stale_after: timedelta = _HOUR
) -> tuple[dict[str, int], dict[str, int]]:
    """The summary beside the same counts taken row by row with ``shared.twin.sync_status``,
    in one snapshot and at one ``now()`` (the caller's transaction, if it is in one)."""
    if not conn.is_in_transaction():
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await summary_and_truth(conn, tenant_id, stale_after)
    summary = await fleet.summary(conn, tenant_id=tenant_id, stale_after=stale_after)
    now = await conn.fetchval("SELECT now()")
    rows = await conn.fetch(
        """SELECT desired_version, reported_version, last_seen, connected, rejected_version
           FROM device_state
           WHERE tenant_id = $1""",
        tenant_id,
    )
    statuses = Counter(
        twin.sync_status(
            row["desired_version"],
            row["reported_version"],
            row["last_seen"],
            now=now,
            stale_after=stale_after,
            rejected_version=row["rejected_version"],
        )
        for row in rows
    )
    truth = {
        "total": len(rows),
        **{s: statuses[s] for s in ("synced", "pending", "stale", "rejected")},
        "connected": sum(row["connected"] for row in rows),
    }
    return summary, truth


async def assert_exact(conn: asyncpg.Connection, tenant_id: str, **expected: int) -> None:
    summary, truth = await summary_and_truth(conn, tenant_id)
    assert summary == truth, tenant_id
    if expected:
        assert summary == {
            "synced": 0,
            "pending": 0,
            "stale": 0,
            "rejected": 0,
            "connected": 0,
            **expected,
        }, tenant_id


async def test_counts_follow_creates_contacts_desired_writes_reports_and_deletes(
    stack: Stack,
) -> None:
    tenant, admin = await stack.tenant("admin")
    other, other_admin = await stack.tenant("admin")
    devices = [await stack.device(admin, device_id=f"cnt-a{n}") for n in range(5)]
    await stack.device(other_admin, device_id="cnt-b0")
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        await assert_exact(conn, tenant, total=5, stale=5)  # never seen
        await assert_exact(conn, other, total=1, stale=1)

        a0 = {"X-Provision-Token": devices[0]["provision_token"]}
        assert (await stack.ingest.get("/device/v1/shadow", headers=a0)).status_code == 200
        await assert_exact(conn, tenant, total=5, synced=1, stale=4)

        for device_id in ("cnt-a0", "cnt-a1"):
            response = await stack.ui.patch(
                f"/customer/devices/{device_id}/twin/desired",
                json={"desired": {"fan": "on"}},
                headers=admin,
            )
            assert response.status_code == 200, response.text
        # a0 is live and now waits for version 1; a1 was never seen, so it stays stale.
        await assert_exact(conn, tenant, total=5, pending=1, stale=4)

        report = await stack.ingest.post(
            "/device/v1/shadow/reported",
            json={"reported": {"fan": "on"}, "version": 1},
            headers=a0,
        )
        assert report.status_code == 200, report.text
        await assert_exact(conn, tenant, total=5, synced=1, stale=4)

        # a1's first contact is its report over MQTT (the batched report path).
        async with aiomqtt.Client(
            "127.0.0.1",
            stack.broker.port,
            username="cnt-a1",
            password=devices[1]["provision_token"],
            identifier="cnt-a1",
        ) as client:
            await client.publish(
                reported_topic(tenant, "cnt-a1"),
                orjson.dumps({"reported": {"fan": "on"}, "version": 1}),
                qos=1,
            )

        async def applied() -> bool:
            return bool(
                await conn.fetchval(
                    # ... and its disconnect recorded (the broker writes presence in batches).
                    """SELECT reported_version = 1 AND NOT connected
                       FROM device_state WHERE device_id = 'cnt-a1'"""
                )
            )

        await eventually(applied)
        await assert_exact(conn, tenant, total=5, synced=2, stale=3)

        for device_id in ("cnt-a0", "cnt-a2"):
            response = await stack.ui.delete(f"/customer/devices/{device_id}", headers=admin)
            assert response.status_code == 204
        await assert_exact(conn, tenant, total=3, synced=1, stale=2)
        await assert_exact(conn, other, total=1, stale=1)

        await stack.device(admin, device_id="cnt-a9")
        api = await stack.ui.get("/customer/fleet/summary", headers=admin)
        assert api.json() == {
            "total": 4,
            "synced": 1,
            "pending": 0,
            "stale": 3,
            "rejected": 0,
            "connected": 0,
        }
    finally:
        await conn.close()


async def test_counts_follow_bulk_provisioning_sql_loads_rollbacks_and_tenant_deletes(
    stack: Stack,
) -> None:
    tenant, _ = await stack.tenant("viewer")
    other, _ = await stack.tenant("viewer")
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        ids = [f"bp-{n}" for n in range(300)]

        async def provision() -> set[str]:
            async with conn.transaction():
                return await bulk_devices.upsert_credentials(
                    conn,
                    tenant_id=tenant,
                    device_ids=ids,
                    token_hashes=[uuid.uuid4().bytes for _ in ids],
                )

        assert await provision() == set(ids)
        await assert_exact(conn, tenant, total=300, stale=300)
        assert await provision() == set(ids)  # new credentials only: no new devices
        await assert_exact(conn, tenant, total=300, stale=300)

        await add_fleet(stack.settings.database_url, tenant, 1_000)
        await add_fleet(stack.settings.database_url, other, 200, prefix="ot-")
        await assert_exact(conn, tenant)
        await assert_exact(conn, other)
        summary, _ = await summary_and_truth(conn, tenant)
        assert summary["total"] == 1_300

        with pytest.raises(_Rollback):
            async with conn.transaction():
                await insert_devices(conn, tenant, "rb-", 1, 50)
                await conn.execute("DELETE FROM devices WHERE device_id LIKE 'bp-1%'")
                summary, _ = await summary_and_truth(conn, tenant)
                assert summary["total"] == 1_300 + 50 - 111  # its own writes, counted
                raise _Rollback
        await assert_exact(conn, tenant)
        summary, _ = await summary_and_truth(conn, tenant)
        assert summary["total"] == 1_300

        # A hard delete of registry rows cascades to their twins.
        await conn.execute("DELETE FROM devices WHERE device_id LIKE 'bp-1%'")
        await assert_exact(conn, tenant)
        summary, _ = await summary_and_truth(conn, tenant)
        assert summary["total"] == 1_300 - 111

        # Deleting a tenant takes its devices and its counts; a new tenant of the same id
        # starts from nothing.
        await conn.execute("DELETE FROM tenants WHERE tenant_id = $1", tenant)
        assert not await conn.fetchval(
            "SELECT count(*) FROM tenant_device_counts WHERE tenant_id = $1", tenant
        )
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ($1, $1)", tenant)
        await assert_exact(conn, tenant, total=0)
        await assert_exact(conn, other)

        await conn.execute("TRUNCATE device_state")
        await assert_exact(conn, other, total=0)
    finally:
        await conn.close()


class _Rollback(Exception):
    pass


async def test_counts_follow_a_bulk_desired_job(stack: Stack) -> None:
    tenant, operator = await stack.tenant("operator")
    await add_fleet(stack.settings.database_url, tenant, 2_000)
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        before, _ = await summary_and_truth(conn, tenant)
        response = await stack.ui.post(
            "/customer/fleet/desired",
            json={"filter": {"tag": "site:site-7"}, "desired": {"fw": "2.0"}},
            headers=operator,
        )
        assert response.status_code == 202, response.text
        job = await wait_for_job(stack, operator, response.json()["job_id"])
        assert (job["status"], job["written"]) == ("done", 20)
        # Devices 7, 107, ... were all live and synced: each now waits for the new version.
        await assert_exact(
            conn,
            tenant,
            total=before["total"],
            synced=before["synced"] - 20,
            pending=before["pending"] + 20,
            stale=before["stale"],
        )
    finally:
        await conn.close()


async def test_concurrent_writers_of_one_tenant_keep_the_counts_exact(stack: Stack) -> None:
    tenant, admin = await stack.tenant("admin")
    other, _ = await stack.tenant("admin")
    url = stack.settings.database_url

    async def writer(number: int) -> None:
        """Creates and deletes devices of both tenants in many small transactions, some of
        them rolled back, interleaved with the other writers."""
        rng = random.Random(number)
        conn = await db.connect(url, application_name=f"tests-writer-{number}")
        try:
            created: list[str] = []
            for round_ in range(25):
                prefix = f"cw{number}-{round_}-"
                try:
                    async with conn.transaction():
                        await insert_devices(conn, tenant, prefix, 1, rng.randint(1, 20))
                        await insert_devices(conn, other, prefix, 100, 100 + rng.randint(0, 3))
                        await asyncio.sleep(rng.random() / 100)  # hold the transaction open
                        if created and rng.random() < 0.5:
                            gone = created.pop(rng.randrange(len(created)))
                            await conn.execute(
                                "DELETE FROM device_state WHERE device_id LIKE $1 || '%'", gone
                            )
                        if rng.random() < 0.2:
                            raise _Rollback
                    created.append(prefix)
                except _Rollback:
                    pass
        finally:
            await conn.close()

    async def api_creates() -> None:
        for n in range(20):
            await stack.device(admin, device_id=f"cw-api-{n}")

    await asyncio.wait_for(
        asyncio.gather(*(writer(n) for n in range(6)), api_creates()), timeout=120
    )
    conn = await db.connect(url, application_name="tests")
    try:
        await assert_exact(conn, tenant)
        await assert_exact(conn, other)
        # The writers really spread over slots (else they would have queued on one row).
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM tenant_device_counts WHERE tenant_id = $1", tenant
            )
            > 1
        )
    finally:
        await conn.close()


async def test_concurrent_desired_writes_and_reports_keep_pending_exact(stack: Stack) -> None:
    """The kept pending count (migration 010) under writers that move devices in and out of
    pending, one row or many per statement, some transactions rolled back."""
    tenant, _ = await stack.tenant("admin")
    url = stack.settings.database_url
    conn = await db.connect(url, application_name="tests")
    try:
        await insert_devices(conn, tenant, "cp-", 1, 200)
    finally:
        await conn.close()

    async def writer(number: int) -> None:
        rng = random.Random(number)
        conn = await db.connect(url, application_name=f"tests-pending-{number}")
        try:
            for _ in range(30):
                picked = [f"cp-{rng.randint(1, 200)}" for _ in range(rng.randint(1, 40))]
                try:
                    async with conn.transaction():
                        if rng.random() < 0.5:  # desired writes: these become pending
                            statement = "desired_version = desired_version + 1"
                        else:  # reports catching up: these become synced
                            statement = "reported_version = desired_version"
                        await conn.execute(
                            f"""UPDATE device_state SET {statement}
                                WHERE device_id = ANY($1::text[])""",  # noqa: S608
                            sorted(set(picked)),
                        )
                        await asyncio.sleep(rng.random() / 100)
                        if rng.random() < 0.2:
                            raise _Rollback
                except _Rollback:
                    pass
                except asyncpg.DeadlockDetectedError:
                    pass  # two writers' row sets crossed; the transaction is rolled back
        finally:
            await conn.close()

    await asyncio.wait_for(asyncio.gather(*(writer(n) for n in range(6))), timeout=120)
    conn = await db.connect(url, application_name="tests")
    try:
        summary, truth = await summary_and_truth(conn, tenant)
        assert summary == truth
        assert 0 < truth["pending"] < 200
    finally:
        await conn.close()


async def test_stale_and_pending_follow_the_clock_without_any_write(
    database_url: str, broker: Broker
) -> None:
    """A device that stops talking turns stale when stale_after has passed, with no write at
    all: the counts that depend on the clock are never kept, only counted."""
    settings = make_settings(database_url, broker.url, stale_after=timedelta(seconds=3))
    async with running_stack(settings, broker) as stack:
        tenant, admin = await stack.tenant("admin")
        quiet = await stack.device(admin, device_id="clock-synced")
        waiting = await stack.device(admin, device_id="clock-pending")
        for device in (quiet, waiting):
            headers = {"X-Provision-Token": device["provision_token"]}
            assert (await stack.ingest.get("/device/v1/shadow", headers=headers)).status_code == 200
        response = await stack.ui.patch(
            "/customer/devices/clock-pending/twin/desired",
            json={"desired": {"fan": "on"}},
            headers=admin,
        )
        assert response.status_code == 200

        conn = await db.connect(database_url, application_name="tests")
        try:
            # What the status is made of (the publisher may still stamp published_version).
            status_columns = """SELECT device_id, desired_version, reported_version, last_seen
                                FROM device_state ORDER BY device_id"""
            written = await conn.fetch(status_columns)
            first = await stack.ui.get("/customer/fleet/summary", headers=admin)
            assert first.json() == {
                "total": 2,
                "synced": 1,
                "pending": 1,
                "stale": 0,
                "rejected": 0,
                "connected": 0,
            }

            async def all_stale() -> dict[str, Any] | None:
                body: dict[str, Any] = (
                    await stack.ui.get("/customer/fleet/summary", headers=admin)
                ).json()
                assert body["total"] == 2 and sum(body.values()) == 4, body
                return body if body["stale"] == 2 else None

            assert await eventually(all_stale, timeout=30, interval=0.2) == {
                "total": 2,
                "synced": 0,
                "pending": 0,
                "stale": 2,
                "rejected": 0,
                "connected": 0,
            }
            assert await conn.fetch(status_columns) == written  # no contact, no write
            summary, truth = await summary_and_truth(conn, tenant, settings.stale_after)
            assert summary == truth
        finally:
            await conn.close()


async def test_bulk_loads_with_triggers_off_are_still_counted(stack: Stack) -> None:
    """session_replication_role = replica skips ordinary triggers (bench/fleet_scale.py loads
    that way to skip the twin events); the count triggers fire always."""
    tenant, _ = await stack.tenant("viewer")
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            pytest.skip("setting session_replication_role needs a superuser")
        await conn.execute("SET session_replication_role = replica")
        await insert_devices(conn, tenant, "rep-", 1, 500)
        await conn.execute("DELETE FROM device_state WHERE device_id LIKE 'rep-1%'")
        await conn.execute("RESET session_replication_role")
        await assert_exact(conn, tenant, total=500 - 111, synced=500 - 111)
    finally:
        await conn.close()


async def test_a_twin_cannot_move_to_another_tenant(stack: Stack) -> None:
    tenant, admin = await stack.tenant("admin")
    other, _ = await stack.tenant("admin")
    await stack.device(admin, device_id="mv-1")
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        with pytest.raises(asyncpg.FeatureNotSupportedError):
            await conn.execute(
                "UPDATE device_state SET tenant_id = $1 WHERE device_id = 'mv-1'", other
            )
        await assert_exact(conn, tenant, total=1, stale=1)
        await assert_exact(conn, other, total=0)
    finally:
        await conn.close()


async def test_the_migration_backfills_counts_under_writers_and_concurrent_migrators(
    pg_server: str, tmp_path: Path
) -> None:
    """Migration 008 on a database that already has devices, while a writer is mid-transaction
    and another starts during the migration, and with two replicas migrating at once."""
    before_008 = tmp_path / "migrations"
    before_008.mkdir()
    for path in db.MIGRATIONS_DIR.glob("*.sql"):
        if int(path.name[:3]) < 8:
            shutil.copy(path, before_008)
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(with_database(pg_server, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(pg_server, name)
    conns: list[asyncpg.Connection] = []
    try:
        conns = [await db.connect(url, application_name=f"tests-{n}") for n in range(4)]
        setup, early, late, check = conns
        await db.migrate(setup, before_008)
        # Columns of that era that migration 011 drops; the fleet helpers no longer fill them.
        await setup.execute(
            "ALTER TABLE devices ALTER COLUMN broker_salt SET DEFAULT '', "
            "ALTER COLUMN broker_hash SET DEFAULT ''"
        )
        for tenant in ("mig-a", "mig-b"):
            await setup.execute("INSERT INTO tenants (tenant_id, name) VALUES ($1, $1)", tenant)
        await add_fleet(url, "mig-a", 3_000)
        await add_fleet(url, "mig-b", 700, prefix="mb-")

        early_tx = early.transaction()
        await early_tx.start()
        await insert_devices(early, "mig-a", "early-", 1, 40)

        migrators = [await db.connect(url, application_name=f"tests-m{n}") for n in range(2)]
        conns += migrators
        migrations = [asyncio.create_task(db.migrate(m)) for m in migrators]

        async def migration_waits_for_the_writer() -> bool:
            return bool(
                await check.fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE application_name LIKE 'tests-m%' AND wait_event_type = 'Lock'
                         AND query LIKE '%LOCK TABLE device_state%'"""
                )
            )

        await eventually(migration_waits_for_the_writer, timeout=30)

        async def late_writer() -> None:
            async with late.transaction():
                await insert_devices(late, "mig-b", "late-", 1, 25)

        late_insert = asyncio.create_task(late_writer())
        await asyncio.sleep(0.2)
        assert not late_insert.done()  # queued behind the migration's lock
        await early_tx.commit()
        applied = await asyncio.gather(*migrations)
        await late_insert

        # One migrator applied 008 (and any later migration), the other found none left.
        assert [names[:1] for names in sorted(applied, key=len)] == [
            [],
            ["008_fleet_summary_counts"],
        ]
        for tenant, total in (("mig-a", 3_040), ("mig-b", 725)):
            summary, truth = await summary_and_truth(check, tenant)
            assert summary == truth
            assert summary["total"] == total
    finally:
        for conn in conns:
            await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
