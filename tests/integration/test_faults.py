"""Fault injection with real processes (issue 4 §7): kill -9, broker loss, database restart.

Services run as ``iotcloud serve ...`` child processes, the broker is a real Mosquitto, the
database a real PostgreSQL (the per-test database, or a throwaway server for the restart).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import orjson
import pytest

from iotcloud.embedded import EmbeddedPostgres
from iotcloud.provisioning import create_devices
from shared import db
from shared.repositories import tenants
from shared.services.devices import NewDevice
from shared.topics import desired_topic, reported_topic
from tests.support import (
    Broker,
    ServiceProcess,
    add_operator,
    eventually,
    free_port,
    operator_headers,
)

pytestmark = pytest.mark.fault


async def provision(database_url: str, mqtt_url: str, count: int) -> tuple[str, list[NewDevice]]:
    tenant_id = f"t-{uuid.uuid4().hex[:10]}"
    conn = await db.connect(database_url, application_name="tests")
    try:
        await tenants.insert(conn, tenant_id, tenant_id)
        await add_operator(conn, tenant_id)
    finally:
        await conn.close()
    devices = await create_devices(
        database_url,
        tenant_id=tenant_id,
        specs=[(f"d{i:03d}-{uuid.uuid4().hex[:6]}", None) for i in range(count)],
    )
    return tenant_id, devices


def device_client(port: int, device: NewDevice) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        username=device.device_id,
        password=device.provision_token,
        identifier=device.device_id,
        timeout=10,
    )


async def retained_desired(port: int, device: NewDevice) -> dict[str, Any] | None:
    """The retained desired message as the device itself sees it on subscribing."""
    try:
        async with device_client(port, device) as client:
            await client.subscribe(desired_topic(device.tenant_id, device.device_id), qos=1)
            async with asyncio.timeout(1.0):
                async for message in client.messages:
                    body: dict[str, Any] = orjson.loads(message.payload)  # type: ignore[arg-type]
                    return body
    except (aiomqtt.MqttError, TimeoutError):
        return None
    return None


@pytest.fixture
async def services(
    tmp_path: Path, database_url: str, broker: Broker
) -> AsyncIterator[dict[str, ServiceProcess]]:
    started = {
        name: ServiceProcess.make(
            name, home=tmp_path / "home", database_url=database_url, mqtt_url=broker.url
        )
        for name in ("ui", "ingest")
    }
    try:
        for service in started.values():
            service.start()
        for service in started.values():
            await service.wait_ready()
        yield started
    finally:
        for service in started.values():
            service.stop()


# --- (a) kill -9 ingest_iot mid-stream ------------------------------------------------------


async def test_a_kill_9_ingest_mid_stream_loses_no_acknowledged_report(
    tmp_path: Path, database_url: str, broker: Broker
) -> None:
    devices_n, reports_n = 40, 50
    tenant_id, devices = await provision(database_url, broker.url, devices_n)
    ingest = ServiceProcess.make(
        "ingest", home=tmp_path / "home", database_url=database_url, mqtt_url=broker.url
    )
    ingest.start()
    conn = await db.connect(database_url, application_name="tests")
    try:
        await ingest.wait_ready()

        async def send(device: NewDevice) -> None:
            async with device_client(broker.port, device) as client:
                for counter in range(1, reports_n + 1):
                    report = {"counter": counter, "seen": {str(counter): True}}
                    await client.publish(
                        reported_topic(tenant_id, device.device_id),
                        orjson.dumps({"reported": report, "version": 0}),
                        qos=1,  # returns once the broker has the report (PUBACK)
                    )

        async def applied() -> int:
            count: int = await conn.fetchval(
                """SELECT COALESCE(sum((SELECT count(*)
                                        FROM jsonb_object_keys(reported_state->'seen'))), 0)
                   FROM device_state WHERE tenant_id = $1""",
                tenant_id,
            )
            return count

        senders = asyncio.gather(*(send(device) for device in devices))
        await eventually(lambda: _at_least(applied, 150), timeout=30)
        ingest.kill()
        at_kill = await applied()
        await senders  # every report was accepted by the broker, while ingest lay dead
        assert at_kill < devices_n * reports_n, "the kill came too late to test anything"

        ingest.start()
        await ingest.wait_ready()

        behind: dict[str, tuple[int, int]] = {}

        async def all_applied() -> bool:
            rows = await conn.fetch(
                "SELECT device_id, reported_state FROM device_state WHERE tenant_id = $1",
                tenant_id,
            )
            behind.clear()
            for row in rows:
                state = (row["reported_state"].get("counter"), len(row["reported_state"]["seen"]))
                if state != (reports_n, reports_n):
                    behind[row["device_id"]] = state
            return not behind

        try:
            await eventually(all_applied, timeout=60, interval=0.3)
        except AssertionError as exc:
            raise AssertionError(f"(counter, reports seen) of devices behind: {behind}") from exc
        assert await applied() == devices_n * reports_n
    finally:
        ingest.kill()
        await conn.close()


async def _at_least(count: Any, threshold: int) -> bool:
    return bool(await count() >= threshold)


# --- (b) kill -9 the broker while desired writes go on -------------------------------------


async def test_b_desired_converges_after_the_broker_is_killed(
    database_url: str, broker: Broker, services: dict[str, ServiceProcess]
) -> None:
    tenant_id, devices = await provision(database_url, broker.url, 10)
    headers = operator_headers(tenant_id)
    async with httpx.AsyncClient(base_url=services["ui"].url, headers=headers) as api:
        for device in devices:
            first = await api.patch(
                f"/customer/devices/{device.device_id}/twin/desired",
                json={"desired": {"setpoint": 1}},
            )
            assert first.status_code == 200, first.text

        broker.kill()
        for round_ in (2, 3):
            for device in devices:
                patched = await api.patch(
                    f"/customer/devices/{device.device_id}/twin/desired",
                    json={"desired": {"setpoint": round_, "owner": device.device_id}},
                )
                assert patched.status_code == 200, patched.text  # the database is the truth
        ready = await api.get(f"{services['ingest'].url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"] is False

        # Restart as the supervisor does; devices are still checked against the database.
        broker.start()

    conn = await db.connect(database_url, application_name="tests")
    try:
        for device in devices:
            row = await conn.fetchrow(
                "SELECT desired_state, desired_version FROM device_state WHERE device_id = $1",
                device.device_id,
            )
            expected = {"desired": row["desired_state"], "version": row["desired_version"]}
            assert expected == {
                "desired": {"setpoint": 3, "owner": device.device_id},
                "version": 3,
            }

            async def converged(
                device: NewDevice = device, expected: dict[str, Any] = expected
            ) -> bool:
                return await retained_desired(broker.port, device) == expected

            await eventually(converged, timeout=20, interval=0.2)
    finally:
        await conn.close()
    await services["ingest"].wait_ready()


# --- (c) restart PostgreSQL ----------------------------------------------------------------


@pytest.fixture
async def throwaway_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, so restarting it disturbs no other test."""
    home = Path(tempfile.mkdtemp(prefix="iotcloud-pg-restart-"))
    server = EmbeddedPostgres(home, free_port())
    try:
        await asyncio.to_thread(server.ensure_running)
        conn = await db.connect(server.url, application_name="tests")
        try:
            await db.migrate(conn)
        finally:
            await conn.close()
        yield server
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def throwaway_broker(tmp_path: Path, throwaway_postgres: EmbeddedPostgres) -> Iterator[Broker]:
    """A broker whose devices are those of the throwaway server."""
    running = Broker(tmp_path / "broker", free_port(), throwaway_postgres.url)
    running.start()
    try:
        yield running
    finally:
        running.kill()


async def test_c_postgres_restart_answers_503_then_recovers_without_losing_writes(
    tmp_path: Path, throwaway_broker: Broker, throwaway_postgres: EmbeddedPostgres
) -> None:
    database_url = throwaway_postgres.url
    broker = throwaway_broker
    tenant_id, devices = await provision(database_url, broker.url, 2)
    device = devices[0]
    started = [
        ServiceProcess.make(
            name, home=tmp_path / "home", database_url=database_url, mqtt_url=broker.url
        )
        for name in ("ui", "ingest")
    ]
    ui, ingest = started
    for service in started:
        service.start()
    acknowledged: dict[str, int] = {}
    try:
        for service in started:
            await service.wait_ready()
        async with httpx.AsyncClient(headers=operator_headers(tenant_id), timeout=10) as api:
            twin_url = f"{ui.url}/customer/devices/{device.device_id}/twin"

            async def write(n: int) -> int:
                response = await api.patch(
                    twin_url + "/desired", json={"desired": {f"w{n}": n}}, timeout=10
                )
                if response.status_code == 200:
                    acknowledged[f"w{n}"] = n
                return response.status_code

            for n in range(5):
                assert await write(n) == 200
            async with device_client(broker.port, device):
                pass  # the broker has now looked this device up

            await asyncio.to_thread(throwaway_postgres.stop)

            # Every API answers 503 with a JSON body while the database is away.
            assert await write(5) == 503
            listed = await api.get(f"{ui.url}/customer/devices")
            assert listed.status_code == 503
            assert "detail" in listed.json()
            device_headers = {"X-Provision-Token": device.provision_token}
            shadow = await api.get(f"{ingest.url}/device/v1/shadow", headers=device_headers)
            assert shadow.status_code == 503
            assert "detail" in shadow.json()
            for service, checks in (
                (ui, {"database": False}),
                (ingest, {"database": False, "broker": True}),
            ):
                ready = await api.get(f"{service.url}/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"] == checks

            # A report sent over MQTT meanwhile is held by the broker, not dropped. The device
            # logs in again while the database is away: the broker knows it from its cache.
            async with device_client(broker.port, device) as client:
                await client.publish(
                    reported_topic(tenant_id, device.device_id),
                    orjson.dumps({"reported": {"during_outage": True}, "version": 0}),
                    qos=1,
                )

            await asyncio.to_thread(throwaway_postgres.ensure_running)
            for service in started:
                await service.wait_ready(timeout=30)

            async def writable() -> bool:
                return await write(6) == 200

            await eventually(writable, timeout=20, interval=0.2)
            twin = (await api.get(twin_url)).json()
            # Every acknowledged write is there, and no refused one is.
            assert twin["desired"] == {key: value for key, value in acknowledged.items()}
            assert twin["desired_version"] == len(acknowledged)

            async def report_applied() -> bool:
                reported = (await api.get(twin_url)).json()["reported"]
                return reported == {"during_outage": True}

            await eventually(report_applied, timeout=20, interval=0.2)
    finally:
        for service in started:
            service.stop()


# --- (d) a device can touch nothing but its own twin ---------------------------------------


async def test_d_devices_are_confined_to_their_own_topics(
    database_url: str, broker: Broker, services: dict[str, ServiceProcess]
) -> None:
    tenant_id, (a, b) = await provision(database_url, broker.url, 2)
    headers = operator_headers(tenant_id)
    async with httpx.AsyncClient(base_url=services["ui"].url, headers=headers) as api:
        for device in (a, b):
            patched = await api.patch(
                f"/customer/devices/{device.device_id}/twin/desired",
                json={"desired": {"secret": device.device_id}},
            )
            assert patched.status_code == 200

        async with device_client(broker.port, a) as client:
            # Subscribing to B's desired is refused, and nothing of B's arrives; A's own works.
            assert list(await client.subscribe(desired_topic(tenant_id, b.device_id), 1)) == [128]
            # A publishes into B's twin, then into its own; the second is the control.
            await client.publish(
                reported_topic(tenant_id, b.device_id),
                orjson.dumps({"reported": {"hijacked": True}, "version": 0}),
                qos=1,
            )
            await client.publish(
                reported_topic(tenant_id, a.device_id),
                orjson.dumps({"reported": {"own": True}, "version": 0}),
                qos=1,
            )

            async def own_applied() -> bool:
                twin = (await api.get(f"/customer/devices/{a.device_id}/twin")).json()
                return bool(twin["reported"] == {"own": True})

            await eventually(own_applied, timeout=10)
            await client.subscribe(desired_topic(tenant_id, a.device_id), 1)
            async with asyncio.timeout(5):
                async for message in client.messages:
                    assert message.topic.value != desired_topic(tenant_id, b.device_id)
                    if message.topic.value == desired_topic(tenant_id, a.device_id):
                        break

        twin_b = (await api.get(f"/customer/devices/{b.device_id}/twin")).json()
        assert twin_b["reported"] == {}
        assert twin_b["reported_version"] == 0

        # A wrong password is refused.
        wrong = NewDevice(a.device_id, tenant_id, "tok-wrong")
        with pytest.raises(aiomqtt.MqttError):
            async with device_client(broker.port, wrong):
                pass

        # Deleting a device drops its live session within seconds.
        async with device_client(broker.port, b) as client:
            await client.subscribe(desired_topic(tenant_id, b.device_id), 1)
            deleted = await api.delete(f"/customer/devices/{b.device_id}")
            assert deleted.status_code == 204
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(5):
                    async for _ in client.messages:
                        pass
        with pytest.raises(aiomqtt.MqttError):
            async with device_client(broker.port, b):
                pass
