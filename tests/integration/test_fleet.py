"""Fleet queries: filtered device lists, keyset paging under inserts, the status summary, and
the plans PostgreSQL picks for them on a fleet of 10,000+ devices."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import asyncpg

from shared import db
from shared.repositories import devices as devices_repo
from shared.repositories import fleet as fleet_repo
from tests.conftest import Stack

# A generated fleet: device i of a tenant is "<prefix><i, 7 digits>", tagged by site (i % 100)
# and ring (every 1000th is a canary). Every 100th (offset 1) waits for a desired version,
# every 100th (offset 2) has never been seen, every 200th (offset 3) was seen two hours ago.
FLEET_SQL = """
WITH n AS (SELECT i FROM generate_series($3::int, $3::int + $4::int - 1) AS i)
INSERT INTO devices (device_id, tenant_id, name, tags, token_hash)
SELECT $2 || lpad(i::text, 7, '0'), $1, 'unit ' || i,
       jsonb_build_object('site', 'site-' || (i % 100),
                          'ring', CASE WHEN i % 1000 = 0 THEN 'canary' ELSE 'main' END),
       sha256(convert_to($2 || i::text, 'UTF8'))
FROM n
"""
STATE_SQL = """
INSERT INTO device_state (device_id, tenant_id, desired_version, reported_version, last_seen)
SELECT d.device_id, d.tenant_id,
       CASE WHEN i % 100 = 1 THEN 2 ELSE 1 END, 1,
       CASE WHEN i % 100 = 2 THEN NULL
            WHEN i % 200 = 3 THEN now() - interval '2 hours'
            ELSE now() - interval '1 minute' END
FROM devices d, LATERAL (SELECT substr(d.device_id, length($2) + 1)::int AS i) AS n
WHERE d.tenant_id = $1 AND d.device_id LIKE $2 || '%'
  AND NOT EXISTS (SELECT 1 FROM device_state s WHERE s.device_id = d.device_id)
"""


async def add_fleet(
    database_url: str, tenant_id: str, count: int, *, prefix: str = "fd-", start: int = 0
) -> None:
    """``count`` devices in one INSERT ... SELECT generate_series (no API calls)."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(FLEET_SQL, tenant_id, prefix, start, count)
            await conn.execute(STATE_SQL, tenant_id, prefix)
        await conn.execute("ANALYZE devices")
        await conn.execute("ANALYZE device_state")
    finally:
        await conn.close()


def expected_status(i: int) -> str:
    if i % 100 == 2 or i % 200 == 3:
        return "stale"
    return "pending" if i % 100 == 1 else "synced"


async def list_all(stack: Stack, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": 1000, **params, **({"cursor": cursor} if cursor else {})}
        response = await stack.ui.get("/customer/devices", params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body["items"])
        cursor = body["next"]
        if cursor is None:
            return items


async def test_filters_on_ten_thousand_devices(stack: Stack) -> None:
    tenant, headers = await stack.tenant("viewer")
    other, _ = await stack.tenant("viewer")
    await add_fleet(stack.settings.database_url, tenant, 10_000)
    await add_fleet(stack.settings.database_url, other, 2_000, prefix="fo-")

    everything = await list_all(stack, headers)
    assert len(everything) == 10_000
    assert [d["device_id"] for d in everything] == sorted(d["device_id"] for d in everything)
    assert {d["device_id"][:3] for d in everything} == {"fd-"}

    canaries = await list_all(stack, headers, tag="ring:canary")
    assert [d["device_id"] for d in canaries] == [f"fd-{i:07d}" for i in range(0, 10_000, 1000)]
    assert all(d["tags"]["ring"] == "canary" for d in canaries)

    both = await list_all(stack, headers, tag=["ring:main", "site:site-7"])
    assert [d["device_id"] for d in both] == [f"fd-{i:07d}" for i in range(7, 10_000, 100)]

    for status in ("synced", "pending", "stale"):
        found = await list_all(stack, headers, sync_status=status)
        wanted = [f"fd-{i:07d}" for i in range(10_000) if expected_status(i) == status]
        assert [d["device_id"] for d in found] == wanted, status
        assert {d["sync_status"] for d in found} == {status}

    pending_at_site = await list_all(stack, headers, sync_status="pending", tag="site:site-1")
    assert len(pending_at_site) == 100

    text = await list_all(stack, headers, q="0004")
    assert [d["device_id"] for d in text] == [
        f"fd-{i:07d}" for i in range(10_000) if "0004" in f"{i:07d}"
    ]
    by_name = await list_all(stack, headers, q="UNIT 9999")
    assert [d["device_id"] for d in by_name] == ["fd-0009999"]
    assert await list_all(stack, headers, q="100%") == []  # % is literal, not a wildcard

    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        await conn.execute(
            """INSERT INTO device_models (tenant_id, model_id, desired_schema)
               VALUES ($1, 'thermo-v2', '{}')""",
            tenant,
        )
        await conn.execute(
            """UPDATE devices SET model_id = 'thermo-v2'
               WHERE tenant_id = $1 AND device_id LIKE 'fd-00012%'""",
            tenant,
        )
    finally:
        await conn.close()
    model = await list_all(stack, headers, model_id="thermo-v2")
    assert [d["device_id"] for d in model] == [f"fd-{i:07d}" for i in range(1200, 1300)]
    assert await list_all(stack, headers, model_id="thermo-v2", tag="ring:canary") == []


async def test_paging_with_inserts_between_pages_sees_every_device_once(stack: Stack) -> None:
    tenant, headers = await stack.tenant("admin")
    await add_fleet(stack.settings.database_url, tenant, 300, prefix="pg-", start=0)
    existing = {f"pg-{i:07d}" for i in range(300)}

    seen: list[str] = []
    cursor = None
    batch = 0
    while True:
        params: dict[str, Any] = {"limit": 40, **({"cursor": cursor} if cursor else {})}
        body = (await stack.ui.get("/customer/devices", params=params, headers=headers)).json()
        seen.extend(d["device_id"] for d in body["items"])
        cursor = body["next"]
        if cursor is None:
            break
        # New devices land before the cursor, after it, and at the very end, between pages.
        batch += 1
        await add_fleet(stack.settings.database_url, tenant, 3, prefix="pg-", start=1000 * batch)
        for name in (f"pg-a{batch:02d}", f"pg-0000{batch:03d}x"):
            await stack.device(headers, device_id=name)

    assert len(seen) == len(set(seen)), "a device was listed twice"
    assert existing <= set(seen), "a device that existed all along was missed"
    assert seen == sorted(seen)


async def test_summary_counts(stack: Stack) -> None:
    tenant, headers = await stack.tenant("viewer")
    other, _ = await stack.tenant("viewer")
    await add_fleet(stack.settings.database_url, tenant, 10_000)
    await add_fleet(stack.settings.database_url, other, 500, prefix="so-")
    response = await stack.ui.get("/customer/fleet/summary", headers=headers)
    assert response.status_code == 200, response.text
    counts = {status: 0 for status in ("synced", "pending", "stale")}
    for i in range(10_000):
        counts[expected_status(i)] += 1
    assert response.json() == {"total": 10_000, **counts, "rejected": 0, "connected": 0}

    _, empty = await stack.tenant("viewer")
    assert (await stack.ui.get("/customer/fleet/summary", headers=empty)).json() == {
        "total": 0,
        "synced": 0,
        "pending": 0,
        "stale": 0,
        "rejected": 0,
        "connected": 0,
    }
    assert (await stack.ui.get("/customer/fleet/summary")).status_code == 401


async def test_list_validation_errors_are_422(stack: Stack) -> None:
    _, headers = await stack.tenant("viewer")
    for params in (
        {"sync_status": "asleep"},
        {"tag": "no-colon"},
        {"tag": ":value"},
        {"tag": ["a:1", "a:2"]},
        {"cursor": "!!!"},
        {"cursor": "x" * 300},
        {"q": "x" * 201},
        {"q": "nul\x00"},
        {"model_id": "bad/model"},
        {"limit": 0},
        {"limit": 100_000},
    ):
        response = await stack.ui.get("/customer/devices", params=params, headers=headers)
        assert response.status_code == 422, (params, response.text)
        assert "detail" in response.json()


# --- plans -------------------------------------------------------------------------------


class Explaining:
    """Stands in for a connection: EXPLAINs the statement a repository function sends."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.plan: dict[str, Any] = {}

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        raw = await self.conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
        self.plan = json.loads(raw)[0]["Plan"]
        return []

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, int]:
        await self.fetch(sql, *args)
        return {"total": 0, "stale": 0, "pending": 0}


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(nodes(child))
    return found


def index_names(plan: dict[str, Any]) -> set[str]:
    return {node["Index Name"] for node in nodes(plan) if "Index Name" in node}


def plan_text(plan: dict[str, Any], depth: int = 0) -> str:
    """A readable plan for assertion messages."""
    line = "  " * depth + plan["Node Type"]
    for key in ("Relation Name", "Index Name", "Index Cond", "Filter", "Plan Rows"):
        if key in plan:
            line += f" {key}={plan[key]}"
    return "\n".join([line, *(plan_text(child, depth + 1) for child in plan.get("Plans", []))])


def seq_scans(plan: dict[str, Any]) -> set[str]:
    return {node["Relation Name"] for node in nodes(plan) if node["Node Type"] == "Seq Scan"}


async def test_filtered_pages_and_summary_use_indexes(stack: Stack) -> None:
    tenant, _ = await stack.tenant("viewer")
    await add_fleet(stack.settings.database_url, tenant, 12_000)
    # Other tenants share the tables, as on any real cluster.
    for n in range(2):
        other, _ = await stack.tenant("viewer")
        await add_fleet(stack.settings.database_url, other, 5_000, prefix=f"x{n}-")
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        await conn.execute(
            """INSERT INTO device_models (tenant_id, model_id, desired_schema)
               VALUES ($1, 'm', '{}')""",
            tenant,
        )
        await conn.execute(
            "UPDATE devices SET model_id = 'm' WHERE tenant_id = $1 AND device_id LIKE 'fd-00003%'",
            tenant,
        )
        await conn.execute("VACUUM ANALYZE devices")
        await conn.execute("VACUUM ANALYZE device_state")
        explaining = Explaining(conn)
        hour = timedelta(hours=1)

        async def plan_for(**kwargs: Any) -> dict[str, Any]:
            await devices_repo.list_page(
                explaining,  # type: ignore[arg-type]
                tenant_id=tenant,
                device_filter=devices_repo.DeviceFilter(**kwargs),
                after="fd-0005000",
                limit=101,
                stale_after=hour,
            )
            return explaining.plan

        # filter -> (the index that must serve it, the table it filters): that table is
        # never read by a sequential scan. (At this size the planner may still hash-join
        # the other table; at a million devices it probes it by key.)
        expectations = {
            "idx_devices_tags": ({"tags": {"ring": "canary"}}, "devices"),
            "idx_device_state_shadow_pending": ({"sync_status": "pending"}, "device_state"),
            "idx_device_state_last_seen": ({"sync_status": "stale"}, "device_state"),
            "devices_model": ({"model_id": "m"}, "devices"),
        }
        for index, (kwargs, table) in expectations.items():
            plan = await plan_for(**kwargs)
            assert index in index_names(plan), (index, plan_text(plan))
            assert table not in seq_scans(plan), (index, plan_text(plan))

        plan = await plan_for(text="0012345")
        assert index_names(plan) & {"idx_devices_id_trgm", "idx_devices_name_trgm"}, plan
        assert "devices" not in seq_scans(plan), plan_text(plan)

        plan = await plan_for()
        assert not seq_scans(plan), plan_text(plan)

        await fleet_repo.summary(explaining, tenant_id=tenant, stale_after=hour)  # type: ignore[arg-type]
        summary_indexes = index_names(explaining.plan)
        assert {"idx_device_state_pending_last_seen", "idx_device_state_last_seen"} <= (
            summary_indexes
        ), plan_text(explaining.plan)
        # The kept counts are a few rows per tenant: a one-page table is read whole.
        assert not seq_scans(explaining.plan) - {"tenant_device_counts"}, plan_text(explaining.plan)
        # Nothing counts the whole fleet: the twins are read only as index-only ranges of the
        # stale devices and of the stale ones among the pending; the rejecting twins (migration
        # 018) as a range of their partial index.
        state_reads = [
            (node["Node Type"], node.get("Index Name"))
            for node in nodes(explaining.plan)
            if node.get("Relation Name") == "device_state"
        ]
        assert sorted(state_reads) == [
            ("Index Only Scan", "idx_device_state_last_seen"),
            ("Index Only Scan", "idx_device_state_last_seen"),
            ("Index Only Scan", "idx_device_state_pending_last_seen"),
            ("Index Only Scan", "idx_device_state_pending_last_seen"),
            ("Index Scan", "idx_device_state_rejected"),
        ], plan_text(explaining.plan)
    finally:
        await conn.close()
