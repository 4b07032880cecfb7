"""Presence for the operator (SPEC §7, migration 012): devices connect to a real Mosquitto
with the project's auth plugin, over a real PostgreSQL; the twin, the device list and its
``?connected=`` filter, the fleet summary's kept count, ``event: presence`` on the stream, and
ingest_iot's last_seen refresh of connected devices."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from shared import db
from shared.repositories import presence
from tests.conftest import Stack, make_settings, running_stack
from tests.integration.test_broker_auth import device_client, raw_connect, session_dropped
from tests.integration.test_fleet_events import all_sequenced, open_stream, served
from tests.support import Broker, eventually


async def twin(stack: Stack, headers: dict[str, str], device_id: str) -> dict[str, Any]:
    response = await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def listed(stack: Stack, headers: dict[str, str], **params: Any) -> list[str]:
    response = await stack.ui.get("/customer/devices", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [item["device_id"] for item in response.json()["items"]]


async def summary(stack: Stack, headers: dict[str, str]) -> dict[str, int]:
    response = await stack.ui.get("/customer/fleet/summary", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, int] = response.json()
    return body


async def connected_truth(stack: Stack, tenant_id: str) -> int:
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM device_state WHERE tenant_id = $1 AND connected", tenant_id
        )
    finally:
        await conn.close()
    return count


async def wait_connected(
    stack: Stack, headers: dict[str, str], device_id: str, value: bool
) -> None:
    async def reached() -> bool:
        return (await twin(stack, headers, device_id))["connected"] is value

    await eventually(reached)


async def test_twin_list_profile_and_summary_follow_connects_disconnects_and_deletes(
    stack: Stack,
) -> None:
    tenant, admin = await stack.tenant("admin")
    other, other_admin = await stack.tenant("admin")
    a = await stack.device(admin, device_id="pr-a")
    b = await stack.device(admin, device_id="pr-b")
    await stack.device(admin, device_id="pr-c")
    await stack.device(other_admin, device_id="pr-other")
    port = stack.broker.port

    offline = await twin(stack, admin, "pr-a")
    assert (offline["connected"], offline["connected_at"], offline["disconnected_at"]) == (
        False,
        None,
        None,
    )
    assert (await summary(stack, admin))["connected"] == 0

    async with device_client(port, "pr-a", a["provision_token"]):
        await wait_connected(stack, admin, "pr-a", True)
        online = await twin(stack, admin, "pr-a")
        assert online["connected_at"] is not None and online["disconnected_at"] is None
        assert online["last_seen"] is not None and online["sync_status"] != "stale"
        assert await listed(stack, admin, connected="true") == ["pr-a"]
        assert await listed(stack, admin, connected="false") == ["pr-b", "pr-c"]
        # The filter combines with the others and pages like them.
        assert await listed(stack, admin, connected="true", q="pr-b") == []
        assert await listed(stack, admin, connected="false", limit=1) == ["pr-b"]
        items = (await stack.ui.get("/customer/devices", headers=admin)).json()["items"]
        assert {item["device_id"]: item["connected"] for item in items} == {
            "pr-a": True,
            "pr-b": False,
            "pr-c": False,
        }
        profile = (await stack.ui.get("/customer/devices/pr-a", headers=admin)).json()
        assert profile["connected"] is True
        assert (profile["connected_at"], profile["disconnected_at"]) == (
            online["connected_at"],
            None,
        )
        assert (await summary(stack, admin))["connected"] == 1
        assert (await summary(stack, other_admin))["connected"] == 0

        async with device_client(port, "pr-b", b["provision_token"]) as live_b:
            await wait_connected(stack, admin, "pr-b", True)
            assert (await summary(stack, admin))["connected"] == 2
            # Deleted while connected: it leaves the count with its row, and its session.
            deleted = await stack.ui.delete("/customer/devices/pr-b", headers=admin)
            assert deleted.status_code == 204
            counts = await summary(stack, admin)
            assert (counts["total"], counts["connected"]) == (2, 1)
            assert await session_dropped(live_b)
        assert await listed(stack, admin, connected="true") == ["pr-a"]

    await wait_connected(stack, admin, "pr-a", False)
    gone = await twin(stack, admin, "pr-a")
    assert gone["disconnected_at"] is not None
    assert datetime.fromisoformat(gone["disconnected_at"]) >= datetime.fromisoformat(
        gone["connected_at"]
    )
    assert await listed(stack, admin, connected="true") == []
    assert await listed(stack, admin, connected="false") == ["pr-a", "pr-c"]
    assert (await stack.ui.get("/customer/devices/pr-a", headers=admin)).json()[
        "connected"
    ] is False
    assert await summary(stack, admin) == {
        "total": 2,
        "synced": 1,
        "pending": 0,
        "stale": 1,
        "rejected": 0,
        "connected": 0,
    }
    assert await connected_truth(stack, tenant) == 0 == await connected_truth(stack, other)

    bad = await stack.ui.get("/customer/devices", params={"connected": "maybe"}, headers=admin)
    assert bad.status_code == 422


async def test_summary_connected_count_is_exact_under_many_devices(stack: Stack) -> None:
    tenant, admin = await stack.tenant("admin")
    devices = [await stack.device(admin, device_id=f"pm-{n}") for n in range(8)]
    port = stack.broker.port
    sockets = [
        raw_connect(port, d["device_id"], d["provision_token"], keepalive=60) for d in devices
    ]
    try:

        async def all_connected() -> bool:
            return (await summary(stack, admin))["connected"] == 8

        await eventually(all_connected)
        for sock in sockets[:5]:
            sock.close()

        async def three_left() -> bool:
            return await connected_truth(stack, tenant) == 3

        await eventually(three_left)
        assert (await summary(stack, admin))["connected"] == 3
    finally:
        for sock in sockets:
            sock.close()


async def test_presence_events_stream_and_resume_from_last_event_id(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    device = await stack.device(admin, device_id="ps-1")
    await all_sequenced(stack)

    def seen_kinds(*kinds: str) -> Any:
        return lambda seen: all(any(e["event"] == kind for e in seen) for kind in kinds)

    async with served(stack) as client:
        async with open_stream(client, headers=admin) as (_, stream):
            async with device_client(stack.broker.port, "ps-1", device["provision_token"]):
                connect_events = await stream.events_until(seen_kinds("presence", "twin"))
            disconnect_events = await stream.events_until(seen_kinds("presence"))
            # A desired write after the disconnect: the next event on the stream, so nothing
            # (no twin event) came of the disconnect but its presence event.
            patched = await stack.ui.patch(
                "/customer/devices/ps-1/twin/desired", json={"desired": {"x": 1}}, headers=admin
            )
            assert patched.status_code == 200
            after = await stream.next_event()

        # Connecting is the device's first contact: a twin event (as before) and a presence one.
        assert sorted(e["event"] for e in connect_events) == ["presence", "twin"]
        connected = next(e for e in connect_events if e["event"] == "presence")
        assert connected["data"]["device_id"] == "ps-1"
        assert connected["data"]["connected"] is True
        assert connected["data"]["connected_at"] is not None
        assert connected["data"]["disconnected_at"] is None
        assert [e["event"] for e in disconnect_events] == ["presence"]
        disconnected = disconnect_events[0]["data"]
        assert disconnected["connected"] is False
        assert disconnected["connected_at"] == connected["data"]["connected_at"]
        assert datetime.fromisoformat(disconnected["disconnected_at"]) >= datetime.fromisoformat(
            disconnected["connected_at"]
        )
        assert (after["event"], after["data"]["desired_version"]) == ("twin", 1)
        ids = [int(e["id"]) for e in [*connect_events, *disconnect_events, after]]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)

        # Resuming after the connect's presence event replays the rest, same ids, same data.
        async with open_stream(client, headers={**admin, "Last-Event-ID": connected["id"]}) as (
            _,
            resumed,
        ):
            replay = await resumed.events_until(lambda seen: len(seen) >= 2)
        assert [(e["id"], e["event"], e["data"]) for e in replay] == [
            (disconnect_events[0]["id"], "presence", disconnected),
            (after["id"], "twin", after["data"]),
        ]


async def test_which_writes_are_presence_events_and_counted(database_url: str) -> None:
    """In SQL, as the broker writes: a connect is a presence event (and a twin event only when
    it is the device's first contact or one after five silent minutes); a disconnect, and a
    last_seen refresh of a connected device, however late, are no twin events; a restarted
    broker's clearing is a presence event; the kept count follows every one of them."""
    conn = await asyncpg.connect(database_url)

    async def new_events(statement: str, *args: Any) -> list[tuple[str, str, bool | None]]:
        last = await conn.fetchval("SELECT coalesce(max(id), 0) FROM twin_events")
        await conn.execute(statement, *args)
        rows = await conn.fetch(
            """SELECT device_id, kind, connected FROM twin_events
               WHERE id > $1 ORDER BY device_id, kind""",
            last,
        )
        return [(row["device_id"], row["kind"], row["connected"]) for row in rows]

    async def kept() -> int:
        count: int = await conn.fetchval(
            "SELECT sum(connected) FROM tenant_device_counts WHERE tenant_id = 'pe'"
        )
        return count

    def events(*items: tuple[str, bool, int]) -> str:
        return orjson.dumps([{"d": d, "c": c, "t": t} for d, c, t in items]).decode()

    try:
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('pe', 'pe')")
        await conn.execute(
            """INSERT INTO devices (device_id, tenant_id, token_hash)
               SELECT 'pe-' || g, 'pe', sha256(g::text::bytea) FROM generate_series(1, 3) g"""
        )
        await conn.execute(
            "INSERT INTO device_state (device_id, tenant_id) SELECT device_id, 'pe' FROM devices"
        )
        now_ms = int(await conn.fetchval("SELECT extract(epoch FROM now()) * 1000"))
        first = await new_events(
            "SELECT broker_presence('b/1', $1::jsonb)",
            events(("pe-1", True, now_ms), ("pe-2", True, now_ms)),
        )
        assert first == [
            ("pe-1", "presence", True),
            ("pe-1", "twin", True),
            ("pe-2", "presence", True),
            ("pe-2", "twin", True),
        ]
        assert await kept() == 2
        # Connected all along, not seen for ten minutes: the refresh is no event.
        await conn.execute(
            "UPDATE device_state SET last_seen = now() - interval '10 minutes' "
            "WHERE device_id = 'pe-1'"
        )
        last = await conn.fetchval("SELECT max(id) FROM twin_events")
        assert (
            await presence.refresh_connected_seen(conn, older_than=timedelta(minutes=5), limit=10)
            == 1
        )
        assert await conn.fetchval("SELECT count(*) FROM twin_events WHERE id > $1", last) == 0
        # A disconnect ten minutes after the last contact: presence only.
        await conn.execute(
            "UPDATE device_state SET last_seen = now() - interval '10 minutes' "
            "WHERE device_id = 'pe-1'"
        )
        assert await new_events(
            "SELECT broker_presence('b/1', $1::jsonb)", events(("pe-1", False, now_ms + 1))
        ) == [("pe-1", "presence", False)]
        assert await kept() == 1
        # Coming back after ten silent minutes while offline is still a twin event.
        await conn.execute(
            "UPDATE device_state SET last_seen = now() - interval '10 minutes' "
            "WHERE device_id = 'pe-1'"
        )
        back = await new_events(
            "SELECT broker_presence('b/1', $1::jsonb)", events(("pe-1", True, now_ms + 2))
        )
        assert back == [("pe-1", "presence", True), ("pe-1", "twin", True)]
        assert await kept() == 2
        # A reconnect inside one batch: still connected, a new "online since".
        assert await new_events(
            "SELECT broker_presence('b/1', $1::jsonb)",
            events(("pe-2", False, now_ms + 3), ("pe-2", True, now_ms + 4)),
        ) == [("pe-2", "presence", True)]
        assert await kept() == 2
        # A report-like write of a connected device changes nothing of presence.
        assert (
            await new_events(
                "UPDATE device_state SET reported_version = reported_version "
                "WHERE device_id = 'pe-2'"
            )
            == []
        )
        # The broker restarted as another instance: what the old one left is cleared.
        assert await new_events("SELECT broker_started('b/2')") == [
            ("pe-1", "presence", False),
            ("pe-2", "presence", False),
        ]
        assert await kept() == 0
        await conn.execute(
            "SELECT broker_presence('b/2', $1::jsonb)", events(("pe-3", True, now_ms + 5))
        )
        assert await kept() == 1
        deleted = await new_events("DELETE FROM device_state WHERE device_id = 'pe-3'")
        assert deleted == [("pe-3", "deleted", True)]
        assert await kept() == 0
    finally:
        await conn.close()


async def test_connected_devices_that_never_report_stay_live(
    database_url: str, broker: Broker
) -> None:
    """With stale_after = 6 s the leader refreshes, every 1.5 s, the last_seen of connected
    devices not seen for 3 s: a silent connected device is never stale, a disconnected one
    turns stale, and the refreshes are no twin events."""
    settings = make_settings(database_url, broker.url, stale_after=timedelta(seconds=6))
    async with running_stack(settings, broker) as stack:
        _, admin = await stack.tenant("admin")
        quiet = await stack.device(admin, device_id="st-quiet")
        gone = await stack.device(admin, device_id="st-gone")
        sock = raw_connect(broker.port, "st-quiet", quiet["provision_token"], keepalive=60)
        try:
            async with device_client(broker.port, "st-gone", gone["provision_token"]):
                await wait_connected(stack, admin, "st-gone", True)
            await wait_connected(stack, admin, "st-quiet", True)
            await wait_connected(stack, admin, "st-gone", False)
            first_seen = datetime.fromisoformat((await twin(stack, admin, "st-quiet"))["last_seen"])
            conn = await db.connect(database_url, application_name="tests")
            try:
                twin_events_before = await conn.fetchval(
                    "SELECT count(*) FROM twin_events "
                    "WHERE device_id = 'st-quiet' AND kind = 'twin'"
                )
                # Longer than stale_after, sampled all along: never stale.
                for _ in range(18):
                    assert (await twin(stack, admin, "st-quiet"))["sync_status"] != "stale"
                    await asyncio.sleep(0.5)
                quiet_twin = await twin(stack, admin, "st-quiet")
                assert datetime.fromisoformat(quiet_twin["last_seen"]) > first_seen
                assert quiet_twin["connected"] is True
                assert (await twin(stack, admin, "st-gone"))["sync_status"] == "stale"
                assert (
                    await conn.fetchval(
                        "SELECT count(*) FROM twin_events "
                        "WHERE device_id = 'st-quiet' AND kind = 'twin'"
                    )
                    == twin_events_before
                )
            finally:
                await conn.close()
        finally:
            sock.close()


async def test_the_refresh_goes_in_batches_oldest_first_and_skips_locked_rows(
    database_url: str,
) -> None:
    from ingest_iot.presence import refresh_all

    pool = await db.create_pool(database_url, application_name="tests", max_size=3)
    try:
        async with pool.acquire() as conn:
            await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('rb', 'rb')")
            await conn.execute(
                """INSERT INTO devices (device_id, tenant_id, token_hash)
                   SELECT 'rb-' || g, 'rb', sha256(g::text::bytea) FROM generate_series(1, 7) g"""
            )
            await conn.execute(
                """INSERT INTO device_state (device_id, tenant_id, connected, last_seen)
                   SELECT device_id, 'rb', device_id <> 'rb-7',
                          now() - interval '1 hour'
                   FROM devices"""
            )
        async with pool.acquire() as locker, locker.transaction():
            await locker.execute("SELECT 1 FROM device_state WHERE device_id = 'rb-6' FOR UPDATE")
            assert await refresh_all(pool, older_than=timedelta(minutes=30), batch=2) == 5
        async with pool.acquire() as conn:
            stale = await conn.fetch(
                """SELECT device_id FROM device_state
                   WHERE last_seen < now() - interval '30 minutes' ORDER BY device_id"""
            )
            # The locked one waits for the next round; the offline one is left alone.
            assert [row["device_id"] for row in stale] == ["rb-6", "rb-7"]
            assert await refresh_all(pool, older_than=timedelta(minutes=30), batch=2) == 1
            # The partial index serves the refresh's query (on a table this small the
            # planner would read it whole, so sequential scans are ruled out here).
            await conn.execute("SET enable_seqscan = off")
            plan = "\n".join(
                row[0]
                for row in await conn.fetch(
                    """EXPLAIN SELECT device_id FROM device_state
                       WHERE connected AND last_seen < now() - interval '1 minute'
                       ORDER BY last_seen LIMIT 1000"""
                )
            )
            assert "idx_device_state_connected_last_seen" in plan
    finally:
        await pool.close()
