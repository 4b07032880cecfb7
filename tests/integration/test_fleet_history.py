"""The fleet's counts over time (migration 019): samples per tenant and slot, written by
ingest_iot's leader, read through ``GET /customer/fleet/history`` within the tenant only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from iotcloud.provisioning import create_devices
from shared import db
from shared.repositories import tenants
from shared.services import fleet_history
from tests.conftest import Stack, make_settings, running_stack
from tests.support import Broker, eventually


async def test_samples_per_slot_and_the_history_of_ones_own_tenant(stack: Stack) -> None:
    tenant_id, viewer = await stack.tenant("viewer")
    other_id, other = await stack.tenant("viewer")
    url = stack.settings.database_url
    await create_devices(url, tenant_id=tenant_id, specs=[("fh-1", None), ("fh-2", None)])
    conn = await db.connect(url, application_name="tests")
    try:
        # Clear what the leader may already have written, then sample two slots.
        await conn.execute("DELETE FROM fleet_count_samples")
        now = datetime.now(UTC)
        earlier = now - timedelta(minutes=10)
        stale_after = timedelta(hours=1)
        assert await fleet_history.sample_all(conn, stale_after=stale_after, at=earlier) >= 2
        assert await fleet_history.sample_all(conn, stale_after=stale_after, at=earlier) == 0
        assert await fleet_history.sample_all(conn, stale_after=stale_after, at=now) >= 2
        # Older than the retention: deleted when the next sample is taken.
        await conn.execute(
            "INSERT INTO fleet_count_samples VALUES ($1, $2, 9, 9, 0, 0, 0)",
            tenant_id,
            now - timedelta(days=3),
        )
        await fleet_history.sample_all(conn, stale_after=stale_after, at=now)
    finally:
        await conn.close()

    answer = await stack.ui.get("/customer/fleet/history", headers=viewer)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["interval_s"] == 300
    assert [item["total"] for item in body["items"]] == [2, 2]
    assert all(item["stale"] == 2 and item["synced"] == 0 for item in body["items"])
    stamps = [datetime.fromisoformat(item["at"]) for item in body["items"]]
    assert stamps == sorted(stamps) and stamps[0] == fleet_history.slot(earlier)
    theirs = (await stack.ui.get("/customer/fleet/history", headers=other)).json()["items"]
    assert [item["total"] for item in theirs] == [0, 0]
    for bad in ("0", "49", "x"):
        refused = await stack.ui.get(f"/customer/fleet/history?hours={bad}", headers=viewer)
        assert refused.status_code == 422
    assert (await stack.ui.get("/customer/fleet/history")).status_code == 401
    assert other_id != tenant_id


async def test_the_leader_samples_every_tenant(database_url: str, broker: Broker) -> None:
    conn = await db.connect(database_url, application_name="tests")
    try:
        await tenants.insert(conn, "sampled", "Sampled")
    finally:
        await conn.close()
    await create_devices(database_url, tenant_id="sampled", specs=[("s-1", None)])
    async with running_stack(make_settings(database_url, broker.url), broker):

        async def sampled() -> int | None:
            check = await db.connect(database_url, application_name="tests")
            try:
                return await check.fetchval(  # type: ignore[no-any-return]
                    "SELECT total FROM fleet_count_samples WHERE tenant_id = 'sampled'"
                )
            finally:
                await check.close()

        assert await eventually(sampled, timeout=20, interval=0.2) == 1
