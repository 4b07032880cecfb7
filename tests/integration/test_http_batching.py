"""Group commit of ``POST /device/v1/shadow/reported`` (``ingest_iot.report_batcher``):
concurrent reports share a transaction, yet every request gets exactly the answer, and leaves
exactly the twin, history and events, that one report at a time gets and leaves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson

from shared import db
from shared.twin import Limits
from tests.conftest import Stack, make_settings, running_stack
from tests.integration.test_ingest_batching import SEQUENCE, without_times
from tests.support import Broker, eventually

POST = "/device/v1/shadow/reported"


def token(device: dict[str, Any]) -> dict[str, str]:
    return {"X-Provision-Token": device["provision_token"], "Content-Type": "application/json"}


async def post(stack: Stack, device: dict[str, Any] | str, body: bytes) -> httpx.Response:
    headers = (
        token(device)
        if isinstance(device, dict)
        else {"X-Provision-Token": device, "Content-Type": "application/json"}
    )
    return await stack.ingest.post(POST, content=body, headers=headers)


def report(reported: dict[str, Any], version: int, client_token: str | None = None) -> bytes:
    body: dict[str, Any] = {"reported": reported, "version": version}
    if client_token is not None:
        body["clientToken"] = client_token
    return orjson.dumps(body)


async def fetch(stack: Stack, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def row_locked(stack: Stack, device_id: str) -> AsyncIterator[None]:
    """Hold the twin's row lock: a batch holding this device stalls, and the next piles up."""
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT 1 FROM device_state WHERE device_id = $1 FOR UPDATE", device_id
            )
            yield
    finally:
        await conn.close()


async def batch_stalled(stack: Stack) -> bool:
    rows = await fetch(
        stack,
        """SELECT 1 FROM pg_stat_activity
           WHERE application_name = 'ingest_iot' AND wait_event_type = 'Lock'""",
    )
    return bool(rows)


def queued(stack: Stack, count: int) -> Any:
    """Until ``count`` reports wait for the next batch (the batcher's own queue)."""
    batcher = stack.ingest_app.state.report_batcher

    async def check() -> bool:
        return len(batcher._waiting) >= count

    return check


async def history(stack: Stack, device_id: str) -> list[asyncpg.Record]:
    return await fetch(
        stack,
        """SELECT version, patch, at FROM twin_history
           WHERE device_id = $1 AND kind = 'reported' ORDER BY id""",
        device_id,
    )


async def test_concurrent_reports_apply_once_each_in_order_and_share_commits(
    stack: Stack,
) -> None:
    _, admin = await stack.tenant("admin")
    devices = [await stack.device(admin) for _ in range(10)]
    plug, chatty = devices[0], devices[1]
    per_device = 5
    async with row_locked(stack, plug["device_id"]):
        stalled = asyncio.gather(post(stack, plug, report({"plug": True}, 0)))
        await eventually(lambda: batch_stalled(stack))
        # Behind the stalled batch: every device's first report, then four more of one.
        sends = [post(stack, device, report({"n": 1}, 0)) for device in devices[1:]]
        sends += [post(stack, chatty, report({"n": n}, 0)) for n in range(2, per_device + 1)]
        responses = asyncio.gather(*sends)
        await eventually(queued(stack, len(sends)))
    assert [r.status_code for r in await stalled] == [200]
    answered = await responses
    assert [(r.status_code, r.json()) for r in answered] == [
        (200, {"accepted": True, "version": 0})
    ] * len(sends)

    transactions: dict[Any, set[str]] = {}
    for device in devices[1:]:
        rows = await history(stack, device["device_id"])
        expected = per_device if device is chatty else 1
        assert [row["patch"]["n"] for row in rows] == list(range(1, expected + 1))
        for row in rows:
            transactions.setdefault(row["at"], set()).add(device["device_id"])
    # The other devices' first reports shared one commit; the chatty device's reports each
    # went in a batch of their own, one after another.
    assert max(len(ids) for ids in transactions.values()) == len(devices) - 1
    chatty_times = [row["at"] for row in await history(stack, chatty["device_id"])]
    assert len(set(chatty_times)) == per_device and chatty_times == sorted(chatty_times)
    twin = await stack.ui.get(f"/customer/devices/{chatty['device_id']}/twin", headers=admin)
    assert twin.json()["reported"] == {"n": per_device}


async def test_refusals_in_a_batch_touch_only_their_own_request(stack: Stack) -> None:
    """A wrong, revoked or malformed-and-wrong token is 401; a malformed body with a good
    token is 422 and marks the device seen; a stale version is 409 with the current version;
    the good reports of the same batch are accepted."""
    _, admin = await stack.tenant("admin")
    plug, good, other, malformed, conflicting, revoked = [
        await stack.device(admin) for _ in range(6)
    ]
    for n in (1, 2):
        patched = await stack.ui.patch(
            f"/customer/devices/{conflicting['device_id']}/twin/desired",
            json={"desired": {"n": n}},
            headers=admin,
        )
        assert patched.status_code == 200
    assert (await post(stack, conflicting, report({"n": 2}, 2))).status_code == 200
    deleted = await stack.ui.delete(f"/customer/devices/{revoked['device_id']}", headers=admin)
    assert deleted.status_code == 204

    async with row_locked(stack, plug["device_id"]):
        stalled = asyncio.gather(post(stack, plug, report({}, 0)))
        await eventually(lambda: batch_stalled(stack))
        sends = [
            post(stack, good, report({"a": 1}, 0, "g")),
            post(stack, "tok-nobody-has-this", report({"a": 1}, 0)),
            post(stack, revoked, report({"a": 1}, 0)),
            post(stack, "tok-nobody-has-this-either", b"{not json"),
            post(stack, malformed, b'{"reported": [], "version": 0}'),
            post(stack, conflicting, report({"n": 1}, 1, "c")),
            post(stack, other, report({"b": 2}, 0)),
        ]
        responses = asyncio.gather(*sends)
        await eventually(queued(stack, len(sends)))
    await stalled
    answered = [(r.status_code, r.json()) for r in await responses]
    unauthorised = (401, {"detail": "invalid provision token"})
    assert answered[:4] == [
        (200, {"accepted": True, "version": 0, "clientToken": "g"}),
        unauthorised,
        unauthorised,
        unauthorised,
    ]
    assert answered[4] == (422, {"detail": "'reported' must be a JSON object"})
    assert answered[5][0] == 409
    assert answered[5][1] | {"error": None} == {
        "accepted": False,
        "version": 2,
        "error": None,
        "clientToken": "c",
    }
    assert "stale" in answered[5][1]["error"]
    assert answered[6] == (200, {"accepted": True, "version": 0})

    twins = {
        name: (await stack.ui.get(f"/customer/devices/{d['device_id']}/twin", headers=admin)).json()
        for name, d in (("good", good), ("malformed", malformed), ("other", other))
    }
    assert twins["good"]["reported"] == {"a": 1} and twins["other"]["reported"] == {"b": 2}
    assert twins["malformed"]["last_seen"] is not None
    assert twins["malformed"]["reported"] == {}
    assert await history(stack, malformed["device_id"]) == []


async def test_batched_answers_and_effects_equal_one_at_a_time(
    database_url: str, broker: Broker
) -> None:
    """Each round sends one payload of the mixed sequence (accepted, duplicate, stale,
    unknown, not JSON, too large, merged too large, too deep, ...) from three devices at once
    (a batch) and from a reference device alone: the answers, twins, metadata, history and
    twin events are the same."""
    settings = make_settings(
        database_url, broker.url, limits=Limits(max_state_bytes=400, max_depth=4)
    )
    async with running_stack(settings, broker) as stack:
        _, admin = await stack.tenant("admin")
        single = await stack.device(admin)
        batched = [await stack.device(admin) for _ in range(3)]
        for device in (single, *batched):
            for step in range(2):  # desired_version 2: versions 1 and 2 are reportable
                patched = await stack.ui.patch(
                    f"/customer/devices/{device['device_id']}/twin/desired",
                    json={"desired": {"step": step}},
                    headers=admin,
                )
                assert patched.status_code == 200

        def answer(response: httpx.Response) -> tuple[int, Any]:
            return response.status_code, response.json()

        for payload in SEQUENCE:
            alone = answer(await post(stack, single, payload))
            together = await asyncio.gather(*(post(stack, d, payload) for d in batched))
            assert [answer(r) for r in together] == [alone] * len(batched), payload

        async def effects(device: dict[str, Any]) -> tuple[Any, ...]:
            device_id = device["device_id"]
            twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
            events = await fetch(
                stack,
                """SELECT kind, desired_version, reported_version, last_seen IS NULL AS unseen
                   FROM twin_events WHERE device_id = $1 ORDER BY id""",
                device_id,
            )
            rows = await history(stack, device_id)
            return (
                {k: v for k, v in twin.items() if k not in {"device_id", "last_seen"}}
                | {"metadata": without_times(twin["metadata"]), "shadow_updated_at": None},
                [(row["version"], row["patch"]) for row in rows],
                [tuple(event) for event in events],
            )

        reference = await effects(single)
        assert len(reference[1]) == 6  # the accepted reports of the sequence
        for device in batched:
            assert await effects(device) == reference
        moments = await fetch(
            stack,
            """SELECT at, count(*) AS devices FROM twin_history
               WHERE kind = 'reported' AND device_id = ANY($1::text[]) GROUP BY at""",
            [d["device_id"] for d in batched],
        )
        assert max(row["devices"] for row in moments) > 1  # some rounds did share a commit


async def test_the_database_going_away_mid_batch_is_503_for_all_and_writes_nothing(
    stack: Stack,
) -> None:
    _, admin = await stack.tenant("admin")
    plug = await stack.device(admin, device_id="a-plug")
    reporters = [await stack.device(admin, device_id=f"b-reporter-{n}") for n in range(3)]
    last = await stack.device(admin, device_id="z-last")  # locked last: the batch is mid-way
    async with row_locked(stack, last["device_id"]):
        async with row_locked(stack, plug["device_id"]):
            stalled = asyncio.gather(post(stack, plug, report({"plug": True}, 0)))
            await eventually(lambda: batch_stalled(stack))
            sends = [post(stack, d, report({"n": 1}, 0)) for d in (*reporters, last)]
            responses = asyncio.gather(*sends)
            await eventually(queued(stack, len(sends)))
        assert [r.status_code for r in await stalled] == [200]
        # The batch of four has locked the reporters' twins and waits for the last one.
        await eventually(lambda: batch_stalled(stack))
        await fetch(
            stack,
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE application_name = 'ingest_iot' AND wait_event_type = 'Lock'""",
        )
        answered = await responses
    for response in answered:
        assert response.status_code == 503
        assert response.json()["detail"].startswith("database unavailable")
    for device in (*reporters, last):
        twin = (
            await stack.ui.get(f"/customer/devices/{device['device_id']}/twin", headers=admin)
        ).json()
        assert (twin["reported"], twin["reported_version"], twin["last_seen"]) == ({}, 0, None)
        assert await history(stack, device["device_id"]) == []
    # The pool heals: the next reports go through.
    again = await asyncio.gather(*(post(stack, d, report({"n": 2}, 0)) for d in reporters))
    assert [r.status_code for r in again] == [200] * len(reporters)


async def test_a_report_with_a_nul_character_is_422_alone_and_writes_nothing(
    stack: Stack,
) -> None:
    """PostgreSQL cannot store a NUL character in jsonb: a report that carries one, queued
    in one batch with good ones, is refused as malformed (422) before the database sees it;
    it marks its device seen like any refused report and the others are applied."""
    _, admin = await stack.tenant("admin")
    plug, *devices = [await stack.device(admin) for _ in range(4)]
    poisoned = devices[1]
    # As a server answers: a 500 would be the response, not an exception raised into the test.
    transport = httpx.ASGITransport(stack.ingest_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        async with row_locked(stack, plug["device_id"]):
            stalled = asyncio.gather(post(stack, plug, report({}, 0)))
            await eventually(lambda: batch_stalled(stack))
            sends = [
                client.post(
                    POST,
                    content=report({"text": "nul \u0000" if d is poisoned else "fine"}, 0),
                    headers=token(d),
                )
                for d in devices
            ]
            responses = asyncio.gather(*sends)
            await eventually(queued(stack, len(sends)))
        await stalled
        answered = [(r.status_code, r.json()) for r in await responses]
    status, body = answered[1]
    assert status == 422, body
    assert "NUL" in body["detail"] and "/reported/text" in body["detail"], body
    assert answered[0] == answered[2] == (200, {"accepted": True, "version": 0})
    for device in devices:
        rows = await history(stack, device["device_id"])
        assert [row["patch"] for row in rows] == ([] if device is poisoned else [{"text": "fine"}])
    twin = (
        await stack.ui.get(f"/customer/devices/{poisoned['device_id']}/twin", headers=admin)
    ).json()
    assert (twin["reported"], twin["reported_version"]) == ({}, 0)
    assert twin["last_seen"] is not None


async def test_reports_with_the_database_down_are_503(broker: Broker) -> None:
    from tests.support import free_port

    dead = f"postgresql://iot@127.0.0.1:{free_port()}/nothing"
    async with running_stack(make_settings(dead, broker.url), broker) as down:
        answered = await asyncio.gather(
            *(post(down, f"tok-{n}", report({}, 0)) for n in range(5)),
            post(down, "tok-x", b"{not json"),
        )
    for response in answered:
        assert response.status_code == 503
        assert response.json()["detail"].startswith("database unavailable")
        assert response.headers["Retry-After"] == "1"


async def test_a_streamed_body_over_the_limit_is_413_after_the_token_check(stack: Stack) -> None:
    """A chunked body declares no length: the limit counts it as it streams in, and the
    device is still authenticated (and marked seen) before the refusal."""
    _, admin = await stack.tenant("admin")
    device = await stack.device(admin)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"reported": {"b": "'
        for _ in range(40):
            yield b"x" * 8192
        yield b'"}, "version": 0}'

    big = await stack.ingest.post(POST, content=chunks(), headers=token(device))
    assert big.status_code == 413 and "larger than" in big.json()["detail"]
    stranger = await stack.ingest.post(
        POST, content=chunks(), headers={"X-Provision-Token": "tok-nobody"}
    )
    assert stranger.status_code == 401
    twin = (
        await stack.ui.get(f"/customer/devices/{device['device_id']}/twin", headers=admin)
    ).json()
    assert twin["last_seen"] is not None and twin["reported"] == {}


async def test_reports_waiting_when_the_service_stops_are_503(
    database_url: str, broker: Broker
) -> None:
    """Stopping the service (its lifespan ends the batcher) answers every report still
    queued or mid-batch with a 503; none of them is left hanging, none is written."""
    blocker = await db.connect(database_url, application_name="tests")
    try:
        async with running_stack(make_settings(database_url, broker.url), broker) as stack:
            _, admin = await stack.tenant("admin")
            plug, *others = [await stack.device(admin) for _ in range(3)]
            transport = httpx.ASGITransport(stack.ingest_app)
            client = httpx.AsyncClient(transport=transport, base_url="http://ingest")
            holding = blocker.transaction()
            await holding.start()
            await blocker.execute(
                "SELECT 1 FROM device_state WHERE device_id = $1 FOR UPDATE", plug["device_id"]
            )
            sends = [
                client.post(POST, content=report({"n": 1}, 0), headers=token(d))
                for d in (plug, *others)
            ]
            responses = asyncio.gather(*sends)
            await eventually(lambda: batch_stalled(stack))
        answered = await responses
        await client.aclose()
        await holding.rollback()
        assert [r.status_code for r in answered] == [503] * len(sends)
        written = await blocker.fetchval(
            "SELECT count(*) FROM twin_history WHERE kind = 'reported'"
        )
        assert written == 0
    finally:
        await blocker.close()
