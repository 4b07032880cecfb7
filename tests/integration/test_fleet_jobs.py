"""Bulk desired jobs: validation, roles, tenancy, exactly-once writes across a kill -9 and
across concurrent runners, history and MQTT publication like any single write."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import timedelta
from typing import Any

import asyncpg
import orjson

from shared import db
from shared.services import fleet
from shared.twin import Limits
from tests.conftest import Stack
from tests.integration.test_fleet import add_fleet
from tests.support import ROOT, eventually

_HOUR = timedelta(hours=1)


async def wait_for_job(stack: Stack, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        response = await stack.ui.get(f"/customer/fleet/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["status"] != "running" else None

    result: dict[str, Any] = await eventually(finished, timeout=60, interval=0.2)
    return result


async def versions(database_url: str, tenant_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT device_id, desired_version FROM device_state WHERE tenant_id = $1", tenant_id
        )
    finally:
        await conn.close()
    return {row["device_id"]: row["desired_version"] for row in rows}


async def test_job_writes_every_matching_device_once(stack: Stack) -> None:
    tenant, operator = await stack.tenant("operator")
    other, _ = await stack.tenant("operator")
    await add_fleet(stack.settings.database_url, tenant, 3_000)
    await add_fleet(stack.settings.database_url, other, 200, prefix="ot-")
    before = await versions(stack.settings.database_url, tenant)

    response = await stack.ui.post(
        "/customer/fleet/desired",
        json={"filter": {"tag": "site:site-7"}, "desired": {"fw": "2.0", "net": {"ch": 6}}},
        headers=operator,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    job = await wait_for_job(stack, operator, job_id)
    targets = {f"fd-{i:07d}" for i in range(7, 3_000, 100)}
    assert job["status"] == "done"
    assert (job["matched"], job["written"], job["failed"], job["skipped"]) == (30, 30, 0, 0)
    assert job["synced"] == 0

    after = await versions(stack.settings.database_url, tenant)
    for device_id, version in after.items():
        assert version == before[device_id] + (1 if device_id in targets else 0), device_id
    assert set((await versions(stack.settings.database_url, other)).values()) <= {1, 2}

    some = sorted(targets)[0]
    twin = (await stack.ui.get(f"/customer/devices/{some}/twin", headers=operator)).json()
    assert twin["desired"] == {"fw": "2.0", "net": {"ch": 6}}

    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        # History as for a single write, with the operator who queued the job as the actor.
        history = await conn.fetch(
            """SELECT device_id, actor_email, version FROM twin_history
               WHERE tenant_id = $1 AND kind = 'desired'""",
            tenant,
        )
        assert {row["device_id"] for row in history} == targets
        assert {row["actor_email"] for row in history} == {
            (await stack.ui.get("/customer/fleet/jobs", headers=operator)).json()["items"][0][
                "created_by"
            ]
        }
        # Published to the broker like any desired write (the publisher records it).
        await eventually(
            lambda: conn.fetchval(
                """SELECT bool_and(published_version = desired_version) FROM device_state
                   WHERE device_id = ANY($1::text[])""",
                sorted(targets),
            )
        )
        # Devices report the new version: the job counts them as synced.
        await conn.execute(
            """UPDATE device_state SET reported_version = desired_version
               WHERE device_id = ANY($1::text[])""",
            sorted(targets)[:12],
        )
    finally:
        await conn.close()
    job = (await stack.ui.get(f"/customer/fleet/jobs/{job_id}", headers=operator)).json()
    assert job["synced"] == 12

    listing = (await stack.ui.get("/customer/fleet/jobs", headers=operator)).json()
    assert [item["job_id"] for item in listing["items"]] == [job_id]


async def test_job_filters_combine_and_device_ids_are_scoped(stack: Stack) -> None:
    tenant, operator = await stack.tenant("operator")
    other, other_admin = await stack.tenant("admin")
    await add_fleet(stack.settings.database_url, tenant, 1_000)
    foreign = await stack.device(other_admin, device_id="foreign-1")
    response = await stack.ui.post(
        "/customer/fleet/desired",
        json={
            "filter": {
                "device_ids": ["fd-0000001", "fd-0000002", "fd-0000101", foreign["device_id"]],
                "sync_status": "pending",
            },
            "desired": {"mode": "eco"},
        },
        headers=operator,
    )
    assert response.status_code == 202, response.text
    job = await wait_for_job(stack, operator, response.json()["job_id"])
    # fd-1 and fd-101 are pending; fd-2 is stale; the other tenant's device is never touched.
    assert (job["status"], job["matched"], job["written"]) == ("done", 2, 2)
    assert (await versions(stack.settings.database_url, other))["foreign-1"] == 0

    empty = await stack.ui.post(
        "/customer/fleet/desired",
        json={"filter": {"tag": "ring:nowhere"}, "desired": {"mode": "eco"}},
        headers=operator,
    )
    job = await wait_for_job(stack, operator, empty.json()["job_id"])
    assert (job["status"], job["matched"], job["written"], job["synced"]) == ("done", 0, 0, 0)


async def test_job_validation_roles_and_tenancy(stack: Stack) -> None:
    tenant, operator = await stack.tenant("operator")
    _, viewer = await stack.tenant("viewer", tenant_id=tenant)
    _, stranger = await stack.tenant("admin")
    url = "/customer/fleet/desired"
    good = {"filter": {}, "desired": {"a": 1}}

    denied = await stack.ui.post(url, json=good, headers=viewer)
    assert denied.status_code == 403
    assert (await stack.ui.post(url, json=good)).status_code == 401

    for body in (
        [],
        {"desired": {"a": 1}},
        {"filter": {}, "desired": [1]},
        {"filter": [], "desired": {"a": 1}},
        {"filter": {}, "desired": {"a": 1}, "extra": 1},
        {"filter": {"colour": "red"}, "desired": {"a": 1}},
        {"filter": {"tag": "nocolon"}, "desired": {"a": 1}},
        {"filter": {"tag": 5}, "desired": {"a": 1}},
        {"filter": {"sync_status": "sleepy"}, "desired": {"a": 1}},
        {"filter": {"sync_status": 1}, "desired": {"a": 1}},
        {"filter": {"device_ids": "fd-1"}, "desired": {"a": 1}},
        {"filter": {"device_ids": ["bad/id"]}, "desired": {"a": 1}},
        {"filter": {"model_id": "bad model"}, "desired": {"a": 1}},
        {"filter": {}, "desired": {"deep": _nested(20)}},
    ):
        response = await stack.ui.post(url, json=body, headers=operator)
        assert response.status_code == 422, (body, response.text)
        assert "detail" in response.json()
    malformed = await stack.ui.post(
        url, content=b"{not json", headers={**operator, "Content-Type": "application/json"}
    )
    assert malformed.status_code == 422
    too_large = await stack.ui.post(
        url, json={"filter": {}, "desired": {"blob": "x" * 70_000}}, headers=operator
    )
    assert too_large.status_code == 413

    queued = await stack.ui.post(url, json=good, headers=operator)
    job_id = queued.json()["job_id"]
    assert (await stack.ui.get(f"/customer/fleet/jobs/{job_id}", headers=viewer)).status_code == (
        200
    )
    foreign = await stack.ui.get(f"/customer/fleet/jobs/{job_id}", headers=stranger)
    assert foreign.status_code == 404
    assert (await stack.ui.get("/customer/fleet/jobs", headers=stranger)).json()["items"] == []
    bogus = await stack.ui.get("/customer/fleet/jobs/not-a-uuid", headers=operator)
    assert bogus.status_code == 404


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"n": value}
    return value


async def test_refused_devices_fail_the_job_but_not_the_batch(stack: Stack) -> None:
    tenant, admin = await stack.tenant("admin")
    await add_fleet(stack.settings.database_url, tenant, 50)
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        # A model whose schema forbids the job's value, on three of the devices.
        await conn.execute(
            """INSERT INTO device_models (tenant_id, model_id, desired_schema)
               VALUES ($1, 'strict', $2)""",
            tenant,
            orjson.dumps({"type": "object", "properties": {"mode": {"enum": ["eco"]}}}).decode(),
        )
        await conn.execute(
            """UPDATE devices SET model_id = 'strict'
               WHERE device_id IN ('fd-0000010', 'fd-0000020', 'fd-0000030')"""
        )
    finally:
        await conn.close()
    response = await stack.ui.post(
        "/customer/fleet/desired",
        json={"filter": {}, "desired": {"mode": "turbo"}},
        headers=admin,
    )
    job = await wait_for_job(stack, admin, response.json()["job_id"])
    assert (job["status"], job["matched"], job["written"], job["failed"]) == (
        "failed",
        50,
        47,
        3,
    )
    assert "mode" in job["error"]
    after = await versions(stack.settings.database_url, tenant)
    assert after["fd-0000010"] == 1 and after["fd-0000011"] == 2


# --- crash and concurrency -------------------------------------------------------------------


async def _job_progress(database_url: str, job_id: str) -> tuple[int | None, int]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT matched, written FROM fleet_jobs WHERE job_id = $1::uuid", job_id
        )
    finally:
        await conn.close()
    assert row is not None
    return row["matched"], row["written"]


async def _assert_exactly_once(database_url: str, tenant_id: str, job_id: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        # Every device of the fleet started at version 1 or 2 (see add_fleet) and was written
        # once by the job: its history holds exactly one desired write, of the next version.
        wrong = await conn.fetch(
            """SELECT s.device_id, s.desired_version, count(h.id) AS writes
               FROM device_state s
               LEFT JOIN twin_history h ON h.device_id = s.device_id AND h.kind = 'desired'
               WHERE s.tenant_id = $1
               GROUP BY s.device_id, s.desired_version
               HAVING count(h.id) <> 1
                  OR s.desired_version <> (CASE WHEN substr(s.device_id, 4)::int % 100 = 1
                                                THEN 3 ELSE 2 END)""",
            tenant_id,
        )
        assert not wrong, wrong[:5]
        row = await conn.fetchrow(
            "SELECT status, matched, written FROM fleet_jobs WHERE job_id = $1::uuid", job_id
        )
        assert row is not None
        assert dict(row) == {"status": "done", "matched": 10_000, "written": 10_000}
    finally:
        await conn.close()


async def test_a_job_killed_mid_way_resumes_and_writes_each_device_once(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('acme', 'acme')")
    finally:
        await conn.close()
    await add_fleet(database_url, "acme", 10_000)

    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iotcloud.cli",
            "fleet",
            "set-desired",
            "--tenant",
            "acme",
            "--desired",
            '{"fw": "3.1"}',
            "--batch-size",
            "100",
        ],
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "PYTHONPATH": str(ROOT / "services"),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        conn = await asyncpg.connect(database_url)
        try:
            job_id = await eventually(
                lambda: conn.fetchval("SELECT job_id::text FROM fleet_jobs"), timeout=30
            )
        finally:
            await conn.close()

        async def part_written() -> bool:
            matched, written = await _job_progress(database_url, job_id)
            return matched is not None and written >= 1_000

        await eventually(part_written, timeout=60, interval=0.02)
        cli.send_signal(signal.SIGKILL)
    finally:
        cli.kill()
        cli.wait()
    _, written_at_kill = await _job_progress(database_url, job_id)
    assert 0 < written_at_kill < 10_000, "the kill did not land mid-job"

    # A fresh process (here: a JobRunner, as a ui_iot replica starts one) resumes it.
    pool = await db.create_pool(database_url, application_name="tests-resume")
    try:
        runner = fleet.JobRunner(pool, database_url, limits=Limits(), stale_after=_HOUR, workers=3)
        async with asyncio.TaskGroup() as tasks:
            running = tasks.create_task(runner.run(), name="resume-runner")

            await eventually(lambda: _status_done(database_url, job_id), timeout=120)
            running.cancel()
    finally:
        await pool.close()
    await _assert_exactly_once(database_url, "acme", job_id)


async def test_two_runners_share_a_job_without_writing_any_device_twice(
    database_url: str,
) -> None:
    conn = await db.connect(database_url, application_name="tests")
    try:
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('acme', 'acme')")
        job_id = await fleet.create_job(
            conn,
            tenant_id="acme",
            request=fleet.JobRequest({}, {"fw": "4"}),
            created_by="ops@acme.test",
        )
    finally:
        await conn.close()
    await add_fleet(database_url, "acme", 10_000)

    pools = [await db.create_pool(database_url, application_name=f"replica-{n}") for n in (1, 2)]
    try:
        runners = [
            fleet.JobRunner(pool, database_url, limits=Limits(), stale_after=_HOUR)
            for pool in pools
        ]
        async with asyncio.TaskGroup() as tasks:
            running = [
                tasks.create_task(r.run(), name=f"replica-{n}") for n, r in enumerate(runners)
            ]

            await eventually(lambda: _status_done(database_url, job_id), timeout=120)
            for task in running:
                task.cancel()
    finally:
        for pool in pools:
            await pool.close()
    await _assert_exactly_once(database_url, "acme", job_id)


async def _status_done(database_url: str, job_id: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT status = 'done' FROM fleet_jobs WHERE job_id = $1::uuid", job_id
            )
        )
    finally:
        await conn.close()


async def test_a_bulk_write_leaves_what_a_single_patch_leaves(stack: Stack) -> None:
    """shared.services.bulk_desired mirrors twins.patch_desired: same state, version,
    metadata shape and history for the same patch from the same starting point."""
    tenant, operator = await stack.tenant("operator")
    _, admin = await stack.tenant("admin", tenant_id=tenant)
    for name in ("single", "bulk"):
        await stack.device(admin, device_id=f"eq-{name}")
        first = {"desired": {"net": {"ssid": "a", "ch": 1}, "keep": [1, 2], "gone": True}}
        await stack.ui.patch(f"/customer/devices/eq-{name}/twin/desired", json=first, headers=admin)
    patch = {"net": {"ch": 11, "band": {"ghz": 5}}, "gone": None, "keep": [3]}
    single = await stack.ui.patch(
        "/customer/devices/eq-single/twin/desired", json={"desired": patch}, headers=operator
    )
    assert single.status_code == 200
    queued = await stack.ui.post(
        "/customer/fleet/desired",
        json={"filter": {"device_ids": ["eq-bulk"]}, "desired": patch},
        headers=operator,
    )
    await wait_for_job(stack, operator, queued.json()["job_id"])
    twins = {
        name: (await stack.ui.get(f"/customer/devices/eq-{name}/twin", headers=admin)).json()
        for name in ("single", "bulk")
    }

    def without_times(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: without_times(v) for k, v in node.items() if k != "updated_at"}
        return node

    for key in ("desired", "delta", "desired_version", "reported_version", "sync_status"):
        assert twins["single"][key] == twins["bulk"][key], key
    assert without_times(twins["single"]["metadata"]) == without_times(twins["bulk"]["metadata"])
    histories = {
        name: (
            await stack.ui.get(f"/customer/devices/eq-{name}/twin/history", headers=admin)
        ).json()["items"]
        for name in ("single", "bulk")
    }
    assert [(h["kind"], h["actor"], h["version"], h["patch"]) for h in histories["single"]] == [
        (h["kind"], h["actor"], h["version"], h["patch"]) for h in histories["bulk"]
    ]


async def test_a_job_whose_stored_filter_no_longer_parses_fails_instead_of_looping(
    stack: Stack,
) -> None:
    tenant, operator = await stack.tenant("operator")
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        job_id = await conn.fetchval(
            """INSERT INTO fleet_jobs (job_id, tenant_id, filter, patch, created_by)
               VALUES (gen_random_uuid(), $1, '{"colour": "red"}', '{"a": 1}', 'x@y.test')
               RETURNING job_id::text""",
            tenant,
        )
    finally:
        await conn.close()
    job = await wait_for_job(stack, operator, job_id)
    assert (job["status"], job["matched"], job["written"]) == ("failed", 0, 0)
    assert "colour" in job["error"]
    # The runner is still alive: the next job runs.
    queued = await stack.ui.post(
        "/customer/fleet/desired", json={"filter": {}, "desired": {"a": 1}}, headers=operator
    )
    assert (await wait_for_job(stack, operator, queued.json()["job_id"]))["status"] == "done"


async def test_retention_drops_old_finished_jobs_only(database_url: str) -> None:
    from shared.repositories import fleet as fleet_repo

    conn = await db.connect(database_url, application_name="tests")
    try:
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('acme', 'acme')")
        for status, age in (("done", "31 days"), ("failed", "40 days"), ("done", "1 day")):
            await conn.execute(
                f"""INSERT INTO fleet_jobs (job_id, tenant_id, filter, patch, created_by,
                                            status, matched, finished_at)
                    VALUES (gen_random_uuid(), 'acme', '{{}}', '{{}}', 'x', $1, 0,
                            now() - interval '{age}')""",  # noqa: S608 - test constants
                status,
            )
        await conn.execute(
            """INSERT INTO fleet_jobs (job_id, tenant_id, filter, patch, created_by, created_at)
               VALUES (gen_random_uuid(), 'acme', '{}', '{}', 'x', now() - interval '90 days')"""
        )
        assert await fleet_repo.delete_finished_before(conn, age=fleet.JOB_RETENTION, limit=10) == 2
        left = await conn.fetch("SELECT status FROM fleet_jobs ORDER BY status")
        assert [row["status"] for row in left] == ["done", "running"]
    finally:
        await conn.close()
