"""``/metrics`` on both services shows real values, read back in Prometheus' own format."""

from __future__ import annotations

import aiomqtt
import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from shared.topics import reported_topic
from tests.conftest import Stack
from tests.support import eventually


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_of_both_services(stack: Stack) -> None:
    tenant_id, headers = await stack.tenant("admin")
    device = await stack.device(headers)
    device_id = device["device_id"]
    before = await scrape(stack.ingest)

    patched = await stack.ui.patch(
        f"/customer/devices/{device_id}/twin/desired", json={"desired": {"a": 1}}, headers=headers
    )
    assert patched.status_code == 200
    async with aiomqtt.Client(
        "127.0.0.1",
        stack.broker.port,
        username=device_id,
        password=device["provision_token"],
        identifier=device_id,
    ) as client:
        topic = reported_topic(tenant_id, device_id)
        await client.publish(topic, orjson.dumps({"reported": {"a": 1}, "version": 1}), qos=1)
        await client.publish(topic, orjson.dumps({"reported": {"a": 1}, "version": 9}), qos=1)
        await client.publish(topic, b"not json", qos=1)

    async def counted() -> bool:
        after = await scrape(stack.ingest)
        grew = {
            outcome: value(after, "iotcloud_reports_total", transport="mqtt", outcome=outcome)
            - value(before, "iotcloud_reports_total", transport="mqtt", outcome=outcome)
            for outcome in ("accepted", "version", "malformed")
        }
        published = value(after, "iotcloud_desired_published_total") - value(
            before, "iotcloud_desired_published_total"
        )
        return grew == {"accepted": 1, "version": 1, "malformed": 1} and published >= 1

    await eventually(counted)

    for client, service in ((stack.ui, "ui_iot"), (stack.ingest, "ingest_iot")):
        samples = await scrape(client)
        if service == "ingest_iot":  # ui_iot has no broker connection
            assert value(samples, "iotcloud_broker_connected", service=service) == 1
        assert value(samples, "iotcloud_db_pool_connections", service=service, state="max") == 20
        assert value(samples, "iotcloud_db_pool_connections", service=service, state="idle") >= 1
        in_use = frozenset({("service", service), ("state", "in_use")})
        assert ("iotcloud_db_pool_connections", in_use) in samples
    samples = await scrape(stack.ui)
    route = "/customer/devices/{device_id}/twin/desired"
    latency = {"service": "ui_iot", "route": route, "method": "PATCH", "status": "200"}
    assert value(samples, "iotcloud_http_request_seconds_count", **latency) >= 1
    assert value(samples, "iotcloud_http_request_seconds_sum", **latency) > 0

    # The broker goes away: the state shows it and the unpublished desired state ages.
    stack.broker.kill()
    patched = await stack.ui.patch(
        f"/customer/devices/{device_id}/twin/desired", json={"desired": {"a": 2}}, headers=headers
    )
    assert patched.status_code == 200

    async def lagging() -> bool:
        samples = await scrape(stack.ingest)
        return (
            value(samples, "iotcloud_broker_connected", service="ingest_iot") == 0
            and value(samples, "iotcloud_desired_unpublished_oldest_seconds") >= 1
        )

    await eventually(lagging, timeout=15, interval=0.2)
    stack.broker.start()

    async def caught_up() -> bool:
        samples = await scrape(stack.ingest)
        return (
            value(samples, "iotcloud_broker_connected", service="ingest_iot") == 1
            and value(samples, "iotcloud_desired_unpublished_oldest_seconds") == 0
        )

    await eventually(caught_up, timeout=20, interval=0.2)
