"""``GET /customer/events``: Server-Sent Events from the database, scoped to the tenant,
resumable with ``Last-Event-ID`` without gaps, with heartbeats. Served by a real uvicorn
(an in-memory ASGI client would buffer an endless response)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import uvicorn

from tests.conftest import Stack
from tests.support import eventually, free_port


@contextlib.asynccontextmanager
async def served(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The stack's ui_iot app (lifespan already running) on a real port."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            stack.ui_app,
            host="127.0.0.1",
            port=port,
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )
    serving = asyncio.ensure_future(server.serve())

    async def started() -> bool:
        return bool(server.started)

    await eventually(started, timeout=10, interval=0.01)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=httpx.Timeout(10, read=30)
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await serving


@dataclass
class Stream:
    """Reads one SSE response: events as dicts, comment lines counted."""

    lines: AsyncIterator[str]
    comments: list[str] = field(default_factory=list)

    async def next_event(self, timeout: float = 10) -> dict[str, Any]:
        event: dict[str, Any] = {}
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                if line.startswith(":"):
                    self.comments.append(line)
                elif line == "":
                    if "data" in event:
                        return event
                    event = {}
                else:
                    name, _, value = line.partition(": ")
                    event[name] = orjson.loads(value) if name == "data" else value
        raise AssertionError("stream ended")

    async def events_until(self, done: Any, timeout: float = 20) -> list[dict[str, Any]]:
        """Events until ``done(events)`` is true."""
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while not done(seen):
                seen.append(await self.next_event(timeout))
        return seen


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, **request: Any
) -> AsyncIterator[tuple[httpx.Response, Stream]]:
    async with client.stream("GET", "/customer/events", **request) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response.aiter_lines())
        yield response, stream


async def all_sequenced(stack: Stack) -> None:
    """Wait until every event so far has its stream id, so a new stream starts after them."""
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        await eventually(
            lambda: conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM twin_events WHERE seq IS NULL)")
        )
    finally:
        await conn.close()


async def tenant_seqs(stack: Stack, tenant_id: str, after: int = 0) -> list[int]:
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        rows = await conn.fetch(
            """SELECT seq FROM twin_events WHERE tenant_id = $1 AND seq > $2 ORDER BY seq""",
            tenant_id,
            after,
        )
    finally:
        await conn.close()
    return [row["seq"] for row in rows]


async def test_stream_shows_only_the_tenant_and_resumes_from_last_event_id(stack: Stack) -> None:
    tenant_a, admin_a = await stack.tenant("admin")
    _, admin_b = await stack.tenant("admin")
    _, viewer_a = await stack.tenant("viewer", tenant_id=tenant_a)
    a1 = await stack.device(admin_a, device_id="ev-a1")
    await stack.device(admin_a, device_id="ev-a2")
    await stack.device(admin_b, device_id="ev-b1")
    token = viewer_a["Authorization"].removeprefix("Bearer ")
    await all_sequenced(stack)

    async with served(stack) as client:
        async with open_stream(client, params={"access_token": token}) as (_, stream):
            for device_id, headers in (("ev-a1", admin_a), ("ev-b1", admin_b), ("ev-a2", admin_a)):
                response = await stack.ui.patch(
                    f"/customer/devices/{device_id}/twin/desired",
                    json={"desired": {"fan": "on"}},
                    headers=headers,
                )
                assert response.status_code == 200
            report = await stack.ingest.post(
                "/device/v1/shadow/reported",
                json={"reported": {"fan": "on"}, "version": 1},
                headers={"X-Provision-Token": a1["provision_token"]},
            )
            assert report.status_code == 200
            await stack.ui.delete("/customer/devices/ev-a2", headers=admin_a)

            events = await stream.events_until(lambda seen: len(seen) >= 4)
            # a1 written, a2 written, a1's report (its first contact too: one transaction,
            # one event with the twin as it committed), a2 deleted.
            assert [(e["event"], e["data"]["device_id"]) for e in events] == [
                ("twin", "ev-a1"),
                ("twin", "ev-a2"),
                ("twin", "ev-a1"),
                ("deleted", "ev-a2"),
            ]
            assert events[0]["data"] | {"at": None} == {
                "device_id": "ev-a1",
                "desired_version": 1,
                "reported_version": 0,
                "sync_status": "stale",
                "at": None,
            }
            assert events[2]["data"]["reported_version"] == 1
            assert events[2]["data"]["sync_status"] == "synced"
            ids = [int(e["id"]) for e in events]
            assert ids == sorted(ids) and len(set(ids)) == 4
            assert stream.comments and stream.comments[0].startswith(": stream of tenant")

        # Offline: more changes in both tenants; reconnecting with Last-Event-ID sends
        # exactly the missed events of this tenant.
        for n in (2, 3):
            await stack.ui.patch(
                "/customer/devices/ev-a1/twin/desired", json={"desired": {"n": n}}, headers=admin_a
            )
            await stack.ui.patch(
                "/customer/devices/ev-b1/twin/desired", json={"desired": {"n": n}}, headers=admin_b
            )
        async with open_stream(client, headers={**viewer_a, "Last-Event-ID": str(ids[-1])}) as (
            _,
            stream,
        ):
            missed = await stream.events_until(lambda seen: len(seen) >= 2)
        assert [(e["data"]["device_id"], e["data"]["desired_version"]) for e in missed] == [
            ("ev-a1", 2),
            ("ev-a1", 3),
        ]
        assert [int(e["id"]) for e in missed] == await tenant_seqs(stack, tenant_a, ids[-1])


async def test_concurrent_writers_and_a_bulk_job_stream_without_gaps(stack: Stack) -> None:
    tenant_a, admin_a = await stack.tenant("admin")
    tenant_b, admin_b = await stack.tenant("admin")
    for n in range(10):
        await stack.device(admin_a, device_id=f"cw-a{n}")
        await stack.device(admin_b, device_id=f"cw-b{n}")
    await all_sequenced(stack)

    async def patch(headers: dict[str, str], device_id: str, n: int) -> None:
        response = await stack.ui.patch(
            f"/customer/devices/{device_id}/twin/desired",
            json={"desired": {"n": n}},
            headers=headers,
        )
        assert response.status_code == 200

    async with served(stack) as client, open_stream(client, headers=admin_a) as (_, stream):
        writes = [patch(admin_a, f"cw-a{n % 10}", n) for n in range(60)]
        writes += [patch(admin_b, f"cw-b{n % 10}", n) for n in range(40)]
        await asyncio.gather(*writes)
        job = await stack.ui.post(
            "/customer/fleet/desired",
            json={"filter": {}, "desired": {"rollout": 1}},
            headers=admin_a,
        )
        assert job.status_code == 202
        events = await stream.events_until(lambda seen: len(seen) >= 70, timeout=30)

    assert {e["data"]["device_id"] for e in events} == {f"cw-a{n}" for n in range(10)}
    ids = [int(e["id"]) for e in events]
    assert ids == await tenant_seqs(stack, tenant_a, ids[0] - 1), "an event was skipped"
    # Per device, versions arrive in order and every desired version is there once.
    for n in range(10):
        versions = [
            e["data"]["desired_version"] for e in events if e["data"]["device_id"] == f"cw-a{n}"
        ]
        assert versions == list(range(1, 8))
    assert await tenant_seqs(stack, tenant_b), "the other tenant's events exist, unseen"


async def test_heartbeats_keep_an_idle_stream_open(stack: Stack) -> None:
    _, viewer = await stack.tenant("viewer")
    stack.ui_app.state.events.heartbeat_s = 0.2
    async with served(stack) as client, open_stream(client, headers=viewer) as (_, stream):
        async with asyncio.timeout(5):
            async for line in stream.lines:
                if line == ": heartbeat":
                    break


async def test_stream_authentication_and_bad_input(stack: Stack) -> None:
    _, viewer = await stack.tenant("viewer")
    assert (await stack.ui.get("/customer/events")).status_code == 401
    bad = await stack.ui.get("/customer/events", params={"access_token": "not-a-jwt"})
    assert bad.status_code == 401
    forged = viewer["Authorization"].removeprefix("Bearer ")[:-4] + "AAAA"
    assert (
        await stack.ui.get("/customer/events", params={"access_token": forged})
    ).status_code == 401
    assert (
        await stack.ui.get("/customer/events", headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    for value in ("abc", "-1", "1" * 40):
        response = await stack.ui.get(
            "/customer/events", headers={**viewer, "Last-Event-ID": value}
        )
        assert response.status_code == 422, value


async def test_resuming_past_retention_says_reset(stack: Stack) -> None:
    tenant, admin = await stack.tenant("admin")
    await stack.device(admin, device_id="rt-1")
    for n in range(3):
        await stack.ui.patch(
            "/customer/devices/rt-1/twin/desired", json={"desired": {"n": n}}, headers=admin
        )
    await all_sequenced(stack)
    seqs = await tenant_seqs(stack, tenant)
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        # Retention has dropped everything up to the second desired write.
        await conn.execute("DELETE FROM twin_events WHERE seq <= $1", seqs[2])
    finally:
        await conn.close()
    async with served(stack) as client:
        async with open_stream(client, headers={**admin, "Last-Event-ID": str(seqs[0])}) as (
            _,
            stream,
        ):
            first = await stream.next_event()
            assert first["event"] == "reset"
            rest = await stream.next_event()
            assert (int(rest["id"]), rest["data"]["desired_version"]) == (seqs[3], 3)
        async with open_stream(client, headers={**admin, "Last-Event-ID": str(seqs[2])}) as (
            _,
            stream,
        ):
            assert (await stream.next_event())["data"]["desired_version"] == 3


async def test_two_replicas_stream_the_same_events_with_the_same_ids(stack: Stack) -> None:
    from ui_iot.app import create_app

    tenant, admin = await stack.tenant("admin")
    for n in range(5):
        await stack.device(admin, device_id=f"rp-{n}")
    await all_sequenced(stack)
    replica = create_app(stack.settings)
    async with replica.router.lifespan_context(replica):
        second = Stack(
            stack.settings, stack.broker, stack.ui, stack.ingest, replica, stack.ingest_app
        )
        async with (
            served(stack) as client_one,
            served(second) as client_two,
            open_stream(client_one, headers=admin) as (_, one),
            open_stream(client_two, headers=admin) as (_, two),
        ):
            await asyncio.gather(
                *(
                    stack.ui.patch(
                        f"/customer/devices/rp-{n % 5}/twin/desired",
                        json={"desired": {"n": n}},
                        headers=admin,
                    )
                    for n in range(30)
                )
            )
            seen_one = await one.events_until(lambda seen: len(seen) >= 30)
            seen_two = await two.events_until(lambda seen: len(seen) >= 30)
    assert [(e["id"], e["data"]) for e in seen_one] == [(e["id"], e["data"]) for e in seen_two]
    assert [int(e["id"]) for e in seen_one] == await tenant_seqs(
        stack, tenant, int(seen_one[0]["id"]) - 1
    )


async def test_which_writes_are_twin_events(database_url: str) -> None:
    """One event per changed row, whatever the statement's size: inserts, version and state
    changes, a first contact or one after five silent minutes, deletes; routine last_seen
    refreshes and delivery bookkeeping are none."""
    conn = await asyncpg.connect(database_url)

    async def new_events(statement: str) -> list[tuple[str, str, int, int]]:
        last = await conn.fetchval("SELECT coalesce(max(id), 0) FROM twin_events")
        await conn.execute(statement)
        rows = await conn.fetch(
            """SELECT device_id, kind, desired_version, reported_version FROM twin_events
               WHERE id > $1 ORDER BY device_id""",
            last,
        )
        return [tuple(row.values()) for row in rows]  # type: ignore[misc]

    try:
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('ev', 'ev')")
        await conn.execute(
            """INSERT INTO devices (device_id, tenant_id, token_hash)
               SELECT 'ev-' || g, 'ev', sha256(g::text::bytea)
               FROM generate_series(1, 3) g"""
        )
        inserted = await new_events(
            "INSERT INTO device_state (device_id, tenant_id) SELECT device_id, 'ev' FROM devices"
        )
        assert inserted == [(f"ev-{n}", "twin", 0, 0) for n in (1, 2, 3)]
        first_contact = await new_events("UPDATE device_state SET last_seen = now()")
        assert [device for device, *_ in first_contact] == ["ev-1", "ev-2", "ev-3"]
        assert await new_events("UPDATE device_state SET last_seen = now()") == []
        assert await new_events("UPDATE device_state SET published_version = 0") == []
        # One statement, three rows, two of them changed.
        changed = await new_events(
            """UPDATE device_state SET
                   desired_version = desired_version + (device_id <> 'ev-3')::int,
                   last_seen = now()"""
        )
        assert changed == [("ev-1", "twin", 1, 0), ("ev-2", "twin", 1, 0)]
        await conn.execute(
            "UPDATE device_state SET last_seen = now() - interval '6 minutes' "
            "WHERE device_id = 'ev-2'"
        )
        back = await new_events("UPDATE device_state SET last_seen = now()")
        assert back == [("ev-2", "twin", 1, 0)]
        deleted = await new_events("DELETE FROM device_state WHERE device_id = 'ev-1'")
        assert deleted == [("ev-1", "deleted", 1, 0)]
    finally:
        await conn.close()
