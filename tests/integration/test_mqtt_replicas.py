"""Two ``ingest_iot`` replicas (separate processes) share the report stream and the publishing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import db
from shared.services.devices import NewDevice
from shared.topics import reported_topic
from tests.integration.test_faults import device_client, provision, retained_desired
from tests.support import Broker, ServiceProcess, eventually

pytestmark = pytest.mark.fault


async def accepted_over_mqtt(replica: ServiceProcess) -> float:
    async with httpx.AsyncClient(base_url=replica.url) as client:
        text = (await client.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "iotcloud_reports_total"
        and sample.labels == {"transport": "mqtt", "outcome": "accepted"}
    )


async def test_two_replicas_apply_every_report_once(
    tmp_path: Path, database_url: str, broker: Broker
) -> None:
    devices_n, reports_n = 20, 30
    tenant_id, devices = await provision(database_url, broker.url, devices_n)
    replicas = [
        ServiceProcess.make(
            "ingest",
            home=tmp_path / "home",
            database_url=database_url,
            mqtt_url=broker.url,
            replica=name,
        )
        for name in ("r1", "r2")
    ]
    conn = await db.connect(database_url, application_name="tests")
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            await replica.wait_ready()

        async def send(device: NewDevice) -> None:
            async with device_client(broker.port, device) as client:
                for n in range(reports_n):
                    await client.publish(
                        reported_topic(tenant_id, device.device_id),
                        orjson.dumps({"reported": {f"r{n}": n}, "version": 0}),
                        qos=1,
                    )

        await asyncio.gather(*(send(device) for device in devices))

        async def all_applied() -> bool:
            keys = await conn.fetchval(
                """SELECT sum((SELECT count(*) FROM jsonb_object_keys(reported_state)))
                   FROM device_state WHERE tenant_id = $1""",
                tenant_id,
            )
            return bool(keys == devices_n * reports_n)

        await eventually(all_applied, timeout=60, interval=0.2)
        # Each report was taken by exactly one replica: both worked, none applied one twice.
        shares = [await accepted_over_mqtt(replica) for replica in replicas]
        assert all(share > 0 for share in shares), shares
        assert sum(shares) == devices_n * reports_n, shares
        applications = await conn.fetchval(
            "SELECT count(*) FROM twin_history WHERE tenant_id = $1 AND kind = 'reported'",
            tenant_id,
        )
        assert applications == devices_n * reports_n

        # Exactly one replica publishes desired state (it holds the advisory lock) ...
        leaders = await conn.fetchval(
            """SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
               WHERE l.locktype = 'advisory' AND l.granted
                 AND a.application_name = 'ingest_iot-publisher'
                 AND a.datname = current_database()"""
        )
        assert leaders == 1
        # ... and whichever is kill -9'd, desired writes keep reaching the broker.
        for replica in replicas:
            replica.kill()
            replica.start()  # a replica that died comes back; the leader moves meanwhile
            await replica.wait_ready()
            await conn.execute(
                """UPDATE device_state SET desired_state = $2, desired_version = desired_version + 1
                   WHERE device_id = $1""",
                devices[0].device_id,
                {"after_kill_of": replica.env["IOTCLOUD_REPLICA"]},
            )
            version = await conn.fetchval(
                "SELECT desired_version FROM device_state WHERE device_id = $1",
                devices[0].device_id,
            )
            expected = {"desired": {"after_kill_of": replica.env["IOTCLOUD_REPLICA"]}}

            async def delivered(
                version: int = version, expected: dict[str, object] = expected
            ) -> bool:
                return await retained_desired(broker.port, devices[0]) == {
                    **expected,
                    "version": version,
                }

            await eventually(delivered, timeout=20, interval=0.2)
    finally:
        for replica in replicas:
            replica.kill()
        await conn.close()
