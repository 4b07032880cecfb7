"""Retained desired state across broker restarts (SPEC §7): a broker that kept its store is
sent only what it may have lost; a fresh one is filled in the background and converges; and
devices reach the broker over TLS, verifying its certificate."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from ingest_iot.publisher import DesiredPublisher
from shared import db
from shared.mqtt import SERVICE_CLIENT_PREFIX, parse_mqtt_url
from shared.tls import ensure_server_certificate
from tests.conftest import Stack
from tests.support import Broker, eventually, free_port


async def fleet_with_desired(stack: Stack, count: int) -> tuple[str, dict[str, str], list[str]]:
    tenant_id, headers = await stack.tenant("admin")
    ids = []
    for n in range(count):
        device = await stack.device(headers, device_id=f"dl-{n:03d}-{uuid.uuid4().hex[:6]}")
        patched = await stack.ui.patch(
            f"/customer/devices/{device['device_id']}/twin/desired",
            json={"desired": {"n": n}},
            headers=headers,
        )
        assert patched.status_code == 200
        ids.append(device["device_id"])
    return tenant_id, headers, ids


async def all_published(stack: Stack) -> bool:
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        behind: int = await conn.fetchval(
            "SELECT count(*) FROM device_state WHERE desired_version > published_version"
        )
    finally:
        await conn.close()
    return behind == 0


async def retained(stack: Stack, tenant_id: str, expect: int) -> dict[str, Any]:
    """Every retained desired message of the tenant, as the broker holds it now."""
    service = parse_mqtt_url(stack.settings.mqtt_url)
    found: dict[str, Any] = {}
    async with aiomqtt.Client(
        "127.0.0.1",
        stack.broker.port,
        username=service.username,
        password=service.password,
        identifier=f"{SERVICE_CLIENT_PREFIX}probe-{uuid.uuid4().hex[:6]}",
    ) as client:
        await client.subscribe(f"tenant/{tenant_id}/device/+/shadow/desired", qos=1)
        try:
            async with asyncio.timeout(3.0):
                async for message in client.messages:
                    if message.retain:
                        found[message.topic.value.split("/")[3]] = orjson.loads(
                            message.payload  # type: ignore[arg-type]
                        )
                    if len(found) >= expect:
                        break
        except TimeoutError:
            pass
    return found


def publisher(stack: Stack) -> DesiredPublisher:
    published: DesiredPublisher = stack.ingest_app.state.publisher
    return published


async def restart(stack: Stack, *, kill: bool = False) -> None:
    """Stop (saving the store) or kill the broker, start it, wait until the publisher has
    dealt with the new connection."""
    before = publisher(stack).recoveries
    if kill:
        stack.broker.kill()
    else:
        stack.broker.stop()
    stack.broker.start()

    async def recovered() -> bool:
        return publisher(stack).recoveries > before

    await eventually(recovered, timeout=20, interval=0.1)


async def test_a_restart_that_kept_the_store_publishes_nothing_again(stack: Stack) -> None:
    tenant_id, _, ids = await fleet_with_desired(stack, 30)
    await eventually(lambda: all_published(stack))
    filled = publisher(stack).filled
    await restart(stack)  # a clean stop saves the retained store
    assert publisher(stack).republished == 0
    await asyncio.sleep(0.5)
    assert publisher(stack).filled == filled
    held = await retained(stack, tenant_id, len(ids))
    assert {device_id: body["version"] for device_id, body in held.items()} == dict.fromkeys(ids, 1)


async def test_a_killed_broker_gets_back_what_its_last_save_missed(stack: Stack) -> None:
    """kill -9 right after writes: the store on disk predates them. What went out after the
    marker it saved is published again; nothing else."""
    tenant_id, headers, ids = await fleet_with_desired(stack, 20)
    await eventually(lambda: all_published(stack))
    await restart(stack)  # saved: every device at version 1
    for device_id in ids[:5]:
        patched = await stack.ui.patch(
            f"/customer/devices/{device_id}/twin/desired",
            json={"desired": {"late": True}},
            headers=headers,
        )
        assert patched.status_code == 200
    await eventually(lambda: all_published(stack))
    await restart(stack, kill=True)  # within the 5 s autosave: those writes are not on disk
    assert 5 <= publisher(stack).republished < len(ids)
    held = await retained(stack, tenant_id, len(ids))
    expected = {device_id: 2 if device_id in ids[:5] else 1 for device_id in ids}
    assert {device_id: body["version"] for device_id, body in held.items()} == expected


async def test_a_fresh_broker_converges_on_every_desired_state(stack: Stack) -> None:
    tenant_id, headers, ids = await fleet_with_desired(stack, 40)
    await eventually(lambda: all_published(stack))
    stack.broker.kill()
    shutil.rmtree(stack.broker.embedded.root / "data")  # a new, empty broker
    stack.broker.start()
    # A write while the fill runs still arrives, and is never overtaken by an older state.
    patched = await stack.ui.patch(
        f"/customer/devices/{ids[-1]}/twin/desired", json={"desired": {"new": 1}}, headers=headers
    )
    assert patched.status_code == 200

    async def converged() -> bool:
        held = await retained(stack, tenant_id, len(ids))
        versions = {device_id: body["version"] for device_id, body in held.items()}
        return versions == {device_id: 2 if device_id == ids[-1] else 1 for device_id in ids}

    await eventually(converged, timeout=30, interval=0.5)


@pytest.fixture
def tls_broker(tmp_path: Path, database_url: str) -> Any:
    files = ensure_server_certificate(tmp_path / "home")
    running = Broker(tmp_path / "broker", free_port(), database_url, tls_port=free_port())
    running.start(tls=files)
    try:
        yield running, files
    finally:
        running.kill()


async def test_a_device_reaches_the_broker_over_tls_and_verifies_it(
    stack: Stack, tls_broker: Any
) -> None:
    broker, files = tls_broker
    tenant_id, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id, token = device["device_id"], device["provision_token"]

    trusting = ssl.create_default_context(cafile=str(files.ca))
    async with aiomqtt.Client(
        "localhost",
        broker.tls_port,
        username=device_id,
        password=token,
        identifier=device_id,
        tls_context=trusting,
    ) as client:
        granted = await client.subscribe(f"tenant/{tenant_id}/device/{device_id}/shadow/#", qos=1)
        assert list(granted) == [1]

    # A device that does not trust the CA refuses the broker; a wrong token is refused too.
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "localhost",
            broker.tls_port,
            username=device_id,
            password=token,
            identifier=device_id,
            tls_context=ssl.create_default_context(),
        ):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "localhost",
            broker.tls_port,
            username=device_id,
            password="tok-wrong",
            identifier=device_id,
            tls_context=trusting,
        ):
            pass
