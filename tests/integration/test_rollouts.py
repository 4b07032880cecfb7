"""Staged, health-gated rollouts (SPEC §11) over real PostgreSQL and the real device API:
success through every stage, a pause on a low synced ratio, a revert on failed health, a
rejection counting against a stage, bad input, and a kill -9 in the middle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from shared import db
from shared.services import rollouts
from shared.twin import Limits
from tests.conftest import Broker, Stack, make_settings, running_stack
from tests.integration.test_fleet import add_fleet
from tests.support import ROOT, ServiceProcess, add_operator, eventually, operator_headers

REPORT = "/device/v1/shadow/reported"
# What a device does with a desired version: a report body, or None to stay silent.
Behaviour = Callable[[str, dict[str, Any], int], dict[str, Any] | None]


def healthy(_: str, desired: dict[str, Any], version: int) -> dict[str, Any]:
    return {"reported": {**desired, "health": "ok"}, "version": version}


def token_of(device_id: str) -> str:
    """The provision token :func:`devices_answering` gives each device."""
    return f"tok-{device_id}"


@contextlib.asynccontextmanager
async def devices_answering(
    stack: Stack, tenant_id: str, behaviour: Behaviour
) -> AsyncIterator[dict[str, int]]:
    """Every device of the tenant answers each new desired version over HTTP, as
    ``behaviour`` says (the device API, real reports); yields a count of reports."""
    answered: dict[str, int] = {}
    conn = await asyncpg.connect(stack.settings.database_url)
    await conn.execute(
        """UPDATE devices SET token_hash = sha256(convert_to('tok-' || device_id, 'UTF8'))
           WHERE tenant_id = $1""",
        tenant_id,
    )

    async def loop() -> None:
        while True:
            rows = await conn.fetch(
                """SELECT device_id, desired_state, desired_version FROM device_state
                   WHERE tenant_id = $1 AND desired_version > reported_version
                     AND (rejected_version IS NULL OR rejected_version < desired_version)""",
                tenant_id,
            )
            for row in rows:
                key = f"{row['device_id']}@{row['desired_version']}"
                if key in answered:
                    continue
                desired = orjson_loads(row["desired_state"])
                body = behaviour(row["device_id"], desired, row["desired_version"])
                answered[key] = 1
                if body is None:
                    continue
                response = await stack.ingest.post(
                    REPORT, json=body, headers={"X-Provision-Token": token_of(row["device_id"])}
                )
                assert response.status_code == 200, response.text
            await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    try:
        yield answered
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await conn.close()


def orjson_loads(value: Any) -> dict[str, Any]:
    import orjson

    return value if isinstance(value, dict) else orjson.loads(value)


async def wait_state(
    stack: Stack, headers: dict[str, str], rollout_id: str, states: set[str], timeout: float = 60
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        response = await stack.ui.get(f"/customer/fleet/rollouts/{rollout_id}", headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["state"] in states else None

    result: dict[str, Any] = await eventually(check, timeout=timeout, interval=0.1)
    return result


async def rollout_writes(database_url: str, rollout_id: str) -> dict[str, int]:
    """Desired writes with this rollout as actor, per device."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """SELECT device_id, count(*) AS n FROM twin_history
               WHERE kind = 'desired' AND actor_type = 'rollout' AND actor_id = $1
               GROUP BY device_id""",
            rollout_id,
        )
    finally:
        await conn.close()
    return {row["device_id"]: row["n"] for row in rows}


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "filter": {"tag": "ring:main"},
        "desired": {"fw": "2.0"},
        "stages": [10, 50, 100],
        "success": {"synced_ratio": 1.0, "within_s": 30},
        "on_failure": "pause",
    }
    return base | overrides


async def test_rollout_succeeds_through_every_stage(stack: Stack) -> None:
    tenant, operator = await stack.tenant("operator")
    other, _ = await stack.tenant("operator")
    await add_fleet(stack.settings.database_url, tenant, 40)
    await add_fleet(stack.settings.database_url, other, 10, prefix="ot-")
    async with devices_answering(stack, tenant, healthy):
        response = await stack.ui.post(
            "/customer/fleet/rollouts",
            json=body(
                stages=[10, "50%", {"count": 39}],
                success={
                    "synced_ratio": 1.0,
                    "within_s": 30,
                    "health": {"pointer": "/reported/health", "op": "==", "value": "ok"},
                },
            ),
            headers=operator,
        )
        assert response.status_code == 202, response.text
        rollout_id = response.json()["rollout_id"]
        done = await wait_state(stack, operator, rollout_id, {"done", "paused", "reverting"})
    assert done["state"] == "done", done
    # ring:main is 40 devices less fd-0000000 (the canary): 39; stages of 4, 20 and 39.
    assert done["matched"] == 39
    assert [(s["devices"], s["written"], s["synced"], s["status"]) for s in done["stages"]] == [
        (4, 4, 4, "passed"),
        (16, 16, 16, "passed"),
        (19, 19, 19, "passed"),
    ]
    assert all(s["rejected"] == 0 and s["unhealthy"] == 0 for s in done["stages"])
    writes = await rollout_writes(stack.settings.database_url, rollout_id)
    assert len(writes) == 39 and set(writes.values()) == {1}  # each device written once
    twin = (await stack.ui.get("/customer/devices/fd-0000007/twin", headers=operator)).json()
    assert twin["desired"]["fw"] == "2.0" and twin["sync_status"] == "synced"
    listed = (await stack.ui.get("/customer/fleet/rollouts", headers=operator)).json()
    assert [item["rollout_id"] for item in listed["items"]] == [rollout_id]
    # Another tenant neither sees it nor can act on it.
    _, outsider = await stack.tenant("operator", tenant_id=other)
    assert (
        await stack.ui.get(f"/customer/fleet/rollouts/{rollout_id}", headers=outsider)
    ).status_code == 404
    assert (
        await stack.ui.post(f"/customer/fleet/rollouts/{rollout_id}/abort", headers=outsider)
    ).status_code == 404


async def test_low_synced_ratio_pauses_and_resume_continues(stack: Stack) -> None:
    tenant, operator = await stack.tenant("operator")
    await add_fleet(stack.settings.database_url, tenant, 21)
    answering = {"on": False}

    def sometimes(device_id: str, desired: dict[str, Any], version: int) -> dict[str, Any] | None:
        return healthy(device_id, desired, version) if answering["on"] else None

    async with devices_answering(stack, tenant, sometimes) as answered:
        response = await stack.ui.post(
            "/customer/fleet/rollouts",
            json=body(stages=[50, 100], success={"synced_ratio": 0.9, "within_s": 1.5}),
            headers=operator,
        )
        assert response.status_code == 202, response.text
        rollout_id = response.json()["rollout_id"]
        paused = await wait_state(stack, operator, rollout_id, {"paused", "done"})
        assert paused["state"] == "paused", paused
        assert paused["stage"] == 0 and "0 of 10" in paused["reason"], paused
        first, second = paused["stages"]
        assert (first["written"], first["synced"], second["written"]) == (10, 0, 0)

        # Nothing moves while paused; resume opens the gate again, and now devices answer.
        await asyncio.sleep(1.5)
        again = (
            await stack.ui.get(f"/customer/fleet/rollouts/{rollout_id}", headers=operator)
        ).json()
        assert again["stages"][1]["written"] == 0
        conflict = await stack.ui.post(
            f"/customer/fleet/rollouts/{rollout_id}/pause", headers=operator
        )
        assert conflict.status_code == 409
        answering["on"] = True
        answered.clear()  # the stage's devices answer the version they were silent on
        resumed = await stack.ui.post(
            f"/customer/fleet/rollouts/{rollout_id}/resume", headers=operator
        )
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["state"] == "running"
        done = await wait_state(stack, operator, rollout_id, {"done", "paused"})
    assert done["state"] == "done", done
    assert [s["written"] for s in done["stages"]] == [10, 10]


async def test_failed_health_reverts_written_devices_to_their_earlier_values(
    stack: Stack,
) -> None:
    tenant, operator = await stack.tenant("operator")
    await add_fleet(stack.settings.database_url, tenant, 30)
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        # Earlier desired values: fw everywhere, net.ch on some, a key the rollout never touches.
        for n in range(30):
            device_id = f"fd-{n:07d}"
            desired = {"fw": "1.0", "keep": n} | ({"net": {"ch": 1, "tx": 5}} if n % 2 else {})
            await stack.ui.patch(
                f"/customer/devices/{device_id}/twin/desired",
                json={"desired": desired},
                headers=operator,
            )
        before = {
            row["device_id"]: (row["desired_state"], row["desired_version"])
            for row in await conn.fetch(
                "SELECT device_id, desired_state, desired_version FROM device_state"
                " WHERE tenant_id = $1",
                tenant,
            )
        }
    finally:
        await conn.close()

    def unhealthy(_: str, desired: dict[str, Any], version: int) -> dict[str, Any]:
        return {"reported": {**desired, "health": "degraded"}, "version": version}

    async with devices_answering(stack, tenant, unhealthy):
        response = await stack.ui.post(
            "/customer/fleet/rollouts",
            json=body(
                desired={"fw": "2.0", "net": {"ch": 11}, "new": {"x": 1}},
                stages=[20, 100],
                success={
                    "synced_ratio": 0.8,
                    "within_s": 2,
                    "health": {"pointer": "/reported/health", "op": "in", "value": ["ok"]},
                },
                on_failure="revert",
            ),
            headers=operator,
        )
        assert response.status_code == 202, response.text
        rollout_id = response.json()["rollout_id"]
        reverted = await wait_state(stack, operator, rollout_id, {"reverted", "done", "paused"})
    assert reverted["state"] == "reverted", reverted
    first, second = reverted["stages"]
    assert first["written"] == 6 and first["synced"] == 6 and first["unhealthy"] == 6
    assert first["reverted"] == 6 and second["written"] == 0

    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        after = {
            row["device_id"]: (row["desired_state"], row["desired_version"])
            for row in await conn.fetch(
                "SELECT device_id, desired_state, desired_version FROM device_state"
                " WHERE tenant_id = $1",
                tenant,
            )
        }
        written = await rollout_writes(stack.settings.database_url, rollout_id)
        assert len(written) == 6 and set(written.values()) == {2}  # the write and the revert
        for device_id, (state, version) in after.items():
            old_state, old_version = before[device_id]
            assert state == old_state, device_id  # every value back, nothing else left
            assert version == old_version + (2 if device_id in written else 0), device_id
        history = await conn.fetch(
            """SELECT actor_type, actor_id, patch FROM twin_history
               WHERE device_id = $1 AND kind = 'desired' ORDER BY id DESC LIMIT 1""",
            sorted(written)[0],
        )
        assert history[0]["actor_type"] == "rollout"
        assert history[0]["actor_id"] == rollout_id
    finally:
        await conn.close()
    api = (
        await stack.ui.get(f"/customer/devices/{sorted(written)[0]}/twin/history", headers=operator)
    ).json()
    newest_desired = next(item for item in api["items"] if item["kind"] == "desired")
    assert newest_desired["actor"] == {"type": "rollout", "rollout_id": rollout_id}


async def test_rejections_count_against_the_stage_at_once(stack: Stack) -> None:
    tenant, operator = await stack.tenant("operator")
    await add_fleet(stack.settings.database_url, tenant, 11)

    def refuse(_: str, __: dict[str, Any], version: int) -> dict[str, Any]:
        return {"version": version, "rejected": {"code": 22, "message": "fw 2.0 unsupported"}}

    async with devices_answering(stack, tenant, refuse):
        response = await stack.ui.post(
            "/customer/fleet/rollouts",
            json=body(stages=[100], success={"synced_ratio": 0.5, "within_s": 600}),
            headers=operator,
        )
        rollout_id = response.json()["rollout_id"]
        paused = await wait_state(stack, operator, rollout_id, {"paused", "done"}, timeout=30)
    assert paused["state"] == "paused"
    assert paused["stages"][0]["rejected"] == 10 and "10 rejected" in paused["reason"]
    summary = (await stack.ui.get("/customer/fleet/summary", headers=operator)).json()
    assert summary["rejected"] == 10
    aborted = await stack.ui.post(f"/customer/fleet/rollouts/{rollout_id}/abort", headers=operator)
    assert aborted.status_code == 200 and aborted.json()["state"] == "aborted"
    again = await stack.ui.post(f"/customer/fleet/rollouts/{rollout_id}/resume", headers=operator)
    assert again.status_code == 409


async def test_bad_input_is_refused_and_nothing_starts(stack: Stack) -> None:
    tenant, operator = await stack.tenant("operator")
    _, viewer = await stack.tenant("viewer", tenant_id=tenant)
    await add_fleet(stack.settings.database_url, tenant, 20)
    url = "/customer/fleet/rollouts"
    health = {"pointer": "/reported/health", "op": "==", "value": "ok"}
    cases: list[tuple[Any, str]] = [
        (body(stages=[10, 10, 100]), "grow"),
        (body(stages=[50, 20]), "grow"),
        (body(stages=[10, 150]), "100"),
        (body(stages=[{"count": 5}, {"count": 500}]), "matches"),
        (body(stages=[]), "stages"),
        (body(stages=[0]), "over 0"),
        (body(filter={"tag": "ring:nowhere"}), "matches no device"),
        (body(filter={"colour": "red"}), "unknown filter"),
        (body(success={"synced_ratio": 0.9, "within_s": 0}), "within_s"),
        (body(success={"synced_ratio": 0.9, "within_s": -5}), "within_s"),
        (body(success={"synced_ratio": 1.5, "within_s": 5}), "synced_ratio"),
        (body(success={"synced_ratio": 0.9, "within_s": 5, "health": health | {"op": "=~"}}), "op"),
        (
            body(success={"synced_ratio": 0.9, "within_s": 5, "health": health | {"pointer": "x"}}),
            "pointer",
        ),
        (
            body(
                success={
                    "synced_ratio": 0.9,
                    "within_s": 5,
                    "health": health | {"pointer": "/reported/a~2b"},
                }
            ),
            "~",
        ),
        (
            body(
                success={"synced_ratio": 0.9, "within_s": 5, "health": health | {"pointer": "/x/y"}}
            ),
            "/reported",
        ),
        (
            body(success={"synced_ratio": 0.9, "within_s": 5, "health": health | {"op": "in"}}),
            "list",
        ),
        (body(on_failure="explode"), "on_failure"),
        (body(desired={}), "desired"),
        ([1, 2], "object"),
    ]
    for bad, words in cases:
        response = await stack.ui.post(url, json=bad, headers=operator)
        assert response.status_code == 422, (bad, response.text)
        assert words in response.text, (bad, response.text)
    assert (await stack.ui.post(url, content=b"{nope", headers=operator)).status_code in {400, 422}
    assert (await stack.ui.post(url, json=body(), headers=viewer)).status_code == 403
    assert (await stack.ui.get(url, headers=operator)).json()["items"] == []

    # An active rollout on overlapping devices and keys: 409 naming it; disjoint keys or
    # devices are fine.
    first = await stack.ui.post(
        url,
        json=body(desired={"net": {"ch": 6}}, success={"synced_ratio": 1, "within_s": 600}),
        headers=operator,
    )
    assert first.status_code == 202, first.text
    first_id = first.json()["rollout_id"]
    clash = await stack.ui.post(url, json=body(desired={"net": {"ch": 1}}), headers=operator)
    assert clash.status_code == 409, clash.text
    assert first_id in clash.text
    parent = await stack.ui.post(url, json=body(desired={"net": None}), headers=operator)
    assert parent.status_code == 409, parent.text
    other_keys = await stack.ui.post(url, json=body(desired={"net2": 1}), headers=operator)
    assert other_keys.status_code == 202, other_keys.text
    other_devices = await stack.ui.post(
        url,
        json=body(filter={"tag": "ring:canary"}, desired={"net": {"ch": 1}}, stages=[100]),
        headers=operator,
    )
    assert other_devices.status_code == 202, other_devices.text
    listed = (await stack.ui.get(url, headers=operator)).json()["items"]
    assert len(listed) == 3  # the refused ones left nothing behind
    await stack.ui.post(f"{url}/{first_id}/abort", headers=operator)
    after_abort = await stack.ui.post(url, json=body(desired={"net": {"ch": 1}}), headers=operator)
    assert after_abort.status_code == 202, after_abort.text
    assert (await stack.ui.get(f"{url}/not-a-uuid", headers=operator)).status_code == 404
    assert (await stack.ui.post(f"{url}/{first_id}/explode", headers=operator)).status_code == 422


async def test_a_rollout_killed_mid_stage_resumes_and_writes_each_device_once(
    database_url: str, broker: Broker
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('acme', 'acme')")
    finally:
        await conn.close()
    await add_fleet(database_url, "acme", 2_000)
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iotcloud.cli",
            "fleet",
            "rollout",
            "--tenant",
            "acme",
            "--desired",
            '{"fw": "3.1"}',
            "--stages",
            "50,100",
            "--synced-ratio",
            "0.95",
            "--within",
            "60",
            "--batch-size",
            "20",
        ],
        env={**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT / "services")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    conn = await asyncpg.connect(database_url)
    try:

        async def written() -> int:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM rollout_devices WHERE outcome IS NOT NULL"
            )
            return count

        try:
            await eventually(lambda: _at_least(written, 200), timeout=60, interval=0.01)
            cli.send_signal(signal.SIGKILL)
        finally:
            cli.kill()
            cli.wait()
        at_kill = await written()
        assert 0 < at_kill < 1_000, f"the kill did not land mid-stage ({at_kill})"
        rollout_id = await conn.fetchval("SELECT rollout_id::text FROM rollouts")
        state = await conn.fetchval("SELECT state FROM rollouts")
        assert state == "running"
    finally:
        await conn.close()

    # A ui_iot replica's runner takes over; the devices answer as they are written.
    settings = make_settings(database_url, broker.url)
    async with running_stack(settings, broker) as stack:
        _, operator = await stack.tenant("operator", tenant_id="acme")
        async with devices_answering(stack, "acme", healthy):
            done = await wait_state(stack, operator, rollout_id, {"done", "paused"}, timeout=120)
    assert done["state"] == "done", done
    assert [s["written"] for s in done["stages"]] == [1_000, 1_000]
    writes = await rollout_writes(database_url, rollout_id)
    assert len(writes) == 2_000 and set(writes.values()) == {1}


async def _at_least(count: Callable[[], Any], n: int) -> bool:
    return bool(await count() >= n)


async def test_a_rollout_killed_mid_revert_reverts_each_device_once(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('acme', 'acme')")
    finally:
        await conn.close()
    await add_fleet(database_url, "acme", 1_000)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """UPDATE device_state SET desired_state = jsonb_build_object('fw', '1.0',
                                                                     'n', device_id)"""
        )
        before = {
            row["device_id"]: (row["desired_state"], row["desired_version"])
            for row in await conn.fetch(
                "SELECT device_id, desired_state, desired_version FROM device_state"
            )
        }
    finally:
        await conn.close()
    # No device answers: the gate fails after a second and the CLI reverts, 20 at a time.
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iotcloud.cli",
            "fleet",
            "rollout",
            "--tenant",
            "acme",
            "--desired",
            '{"fw": "3.1", "extra": {"a": 1}}',
            "--stages",
            "100",
            "--within",
            "1",
            "--on-failure",
            "revert",
            "--batch-size",
            "20",
        ],
        env={**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT / "services")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    conn = await asyncpg.connect(database_url)
    try:

        async def reverted() -> int:
            count: int = await conn.fetchval("SELECT count(*) FROM rollout_devices WHERE reverted")
            return count

        try:
            await eventually(lambda: _at_least(reverted, 100), timeout=60, interval=0.01)
            cli.send_signal(signal.SIGKILL)
        finally:
            cli.kill()
            cli.wait()
        at_kill = await reverted()
        assert 0 < at_kill < 1_000, f"the kill did not land mid-revert ({at_kill})"
        rollout_id = await conn.fetchval("SELECT rollout_id::text FROM rollouts")
        assert await conn.fetchval("SELECT state FROM rollouts") == "reverting"
    finally:
        await conn.close()

    # A fresh runner (as a ui_iot replica starts one) finishes the revert.
    pool = await db.create_pool(database_url, application_name="tests-resume")
    try:
        runner = rollouts.RolloutRunner(pool, database_url, limits=Limits())
        async with asyncio.TaskGroup() as tasks:
            running = tasks.create_task(runner.run(), name="resume-rollouts")

            async def finished() -> bool:
                async with pool.acquire() as conn:
                    state = await conn.fetchval("SELECT state FROM rollouts")
                return bool(state == "reverted")

            await eventually(finished, timeout=120, interval=0.1)
            running.cancel()
    finally:
        await pool.close()
    writes = await rollout_writes(database_url, rollout_id)
    assert len(writes) == 1_000 and set(writes.values()) == {2}  # written, then reverted
    conn = await asyncpg.connect(database_url)
    try:
        for row in await conn.fetch(
            "SELECT device_id, desired_state, desired_version FROM device_state"
        ):
            state, version = before[row["device_id"]]
            assert row["desired_state"] == state, row["device_id"]
            expected = version + (2 if row["device_id"] in writes else 0)
            assert row["desired_version"] == expected, row["device_id"]
    finally:
        await conn.close()


async def test_two_runners_share_a_stage_without_writing_any_device_twice(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('acme', 'acme')")
    finally:
        await conn.close()
    await add_fleet(database_url, "acme", 2_000)
    pools = [await db.create_pool(database_url, application_name=f"r{n}") for n in range(2)]
    try:
        async with db.transaction(pools[0]) as conn:
            request = rollouts.parse_request(
                {
                    "desired": {"fw": "4"},
                    "stages": [60, 100],
                    "success": {"synced_ratio": 1, "within_s": 600},
                },
                Limits(),
            )
            rollout_id = await rollouts.create(
                conn,
                tenant_id="acme",
                request=request,
                created_by="t@acme.test",
                stale_after=timedelta(hours=1),
            )

        steps = [0, 0]

        async def drive(n: int) -> None:
            """Step until the stage is written and its gate waits (each runner keeps trying
            while the other holds the rollout)."""
            while True:
                if await rollouts.run_step(pools[n], limits=Limits(), batch_size=25):
                    steps[n] += 1
                    continue
                async with pools[n].acquire() as conn:
                    if await conn.fetchval("SELECT stage_written_at IS NOT NULL FROM rollouts"):
                        return
                await asyncio.sleep(0.001)

        await asyncio.gather(drive(0), drive(1))
        async with pools[0].acquire() as conn:
            document = await rollouts.get(conn, tenant_id="acme", rollout_id=rollout_id)
    finally:
        for pool in pools:
            await pool.close()
    assert document["state"] == "running" and document["stage"] == 0
    assert [s["written"] for s in document["stages"]] == [1_200, 0]
    writes = await rollout_writes(database_url, rollout_id)
    assert len(writes) == 1_200 and set(writes.values()) == {1}
    assert all(steps), steps  # both runners wrote batches


async def test_the_ui_service_killed_mid_stage_resumes_it_on_restart(
    database_url: str, broker: Broker, tmp_path: Path
) -> None:
    """kill -9 of the service that runs the rollout (ui_iot's runner), then a restart."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('acme', 'acme')")
        await add_operator(conn, "acme")  # the user the bearer token names
    finally:
        await conn.close()
    await add_fleet(database_url, "acme", 12_000)
    ui = ServiceProcess.make("ui", home=tmp_path, database_url=database_url, mqtt_url=broker.url)
    ui.start()
    try:
        await ui.wait_ready()
        async with httpx.AsyncClient(base_url=ui.url, headers=operator_headers("acme")) as client:
            response = await client.post(
                "/customer/fleet/rollouts",
                json=body(filter={}, stages=[100], success={"synced_ratio": 1, "within_s": 600}),
            )
            assert response.status_code == 202, response.text
            rollout_id = response.json()["rollout_id"]
        conn = await asyncpg.connect(database_url)
        try:

            async def written() -> int:
                count: int = await conn.fetchval(
                    "SELECT count(*) FROM rollout_devices WHERE outcome IS NOT NULL"
                )
                return count

            await eventually(lambda: _at_least(written, 500), timeout=60, interval=0.005)
            ui.kill()
            at_kill = await written()
            assert 0 < at_kill < 12_000, f"the kill did not land mid-stage ({at_kill})"
        finally:
            await conn.close()
        ui.start()
        await ui.wait_ready()
        async with httpx.AsyncClient(base_url=ui.url, headers=operator_headers("acme")) as client:

            async def gating() -> dict[str, Any] | None:
                document: dict[str, Any] = (
                    await client.get(f"/customer/fleet/rollouts/{rollout_id}")
                ).json()
                return document if document["stages"][0]["status"] == "gating" else None

            document = await eventually(gating, timeout=120, interval=0.1)
    finally:
        ui.stop()
    assert document["stages"][0]["written"] == 12_000
    writes = await rollout_writes(database_url, rollout_id)
    assert len(writes) == 12_000 and set(writes.values()) == {1}


async def test_cli_refuses_bad_input_before_anything_starts(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('acme', 'acme')")
    finally:
        await conn.close()
    await add_fleet(database_url, "acme", 10)
    base = ["--tenant", "acme", "--desired", '{"fw": "2"}', "--within", "5"]
    for extra, words in (
        (["--stages", "10,5"], "stages must grow"),
        (["--stages", "10,150"], "at most 100"),
        (["--stages", "ten"], "--stages"),
        (["--stages", "100", "--health", "/reported/health ~ 1"], "--health"),
        (["--stages", "100", "--health", "/reported/x == nope"], "not JSON"),
        (["--stages", "100", "--tag", "ring:nowhere"], "matches no device"),
        (["--stages", "100", "--synced-ratio", "0"], "synced_ratio"),
    ):
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "iotcloud.cli", "fleet", "rollout", *base, *extra],
            env={**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT / "services")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, (extra, result.stderr)
        assert words in result.stderr, (extra, result.stderr)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM rollouts") == 0
    finally:
        await conn.close()


async def test_writes_the_model_refuses_count_against_the_stage(stack: Stack) -> None:
    tenant, operator = await stack.tenant("operator")
    await add_fleet(stack.settings.database_url, tenant, 11)
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        await conn.execute(
            """INSERT INTO device_models (tenant_id, model_id, desired_schema)
               VALUES ($1, 'strict', '{"properties": {"fw": {"enum": ["1.0"]}}}')""",
            tenant,
        )
        await conn.execute(
            """UPDATE devices SET model_id = 'strict' WHERE tenant_id = $1
               AND device_id IN ('fd-0000001', 'fd-0000002', 'fd-0000003')""",
            tenant,
        )
    finally:
        await conn.close()
    async with devices_answering(stack, tenant, healthy):
        response = await stack.ui.post(
            "/customer/fleet/rollouts",
            json=body(stages=[100], success={"synced_ratio": 0.8, "within_s": 600}),
            headers=operator,
        )
        rollout_id = response.json()["rollout_id"]
        paused = await wait_state(stack, operator, rollout_id, {"paused", "done"}, timeout=30)
    assert paused["state"] == "paused", paused
    stage = paused["stages"][0]
    assert (stage["written"], stage["not_written"]) == (7, 3)
    assert "3 refused the write" in paused["reason"]
