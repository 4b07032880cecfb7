"""AWS shadow round trip: an AWS IoT Device SDK v2 device (awscrt, MQTT 3, mutual TLS with a
certificate from the tenant's device CA) publishes ``$aws/things/{thing}/shadow/update`` and
waits for ``/update/accepted``, N times in a row, through ``ingest_iot``'s bridge (one
transaction per update, the twin and its history written).

Beside it, in the same run, on the same broker and the same device connection: the
bare-broker ceiling, where a client with no database behind it answers each update on
``/update/accepted`` at once (device -> broker -> answering client -> broker -> device).

    .venv/bin/python bench/aws_shadow.py [--updates 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
from harness import Scratch, machine, percentile, ratio, scratch
from tests.support import Broker, free_port

from iotcloud.provisioning import provision_fleet
from shared import db, device_certs, device_trust
from shared.mqtt import NO_DELAY, SERVICE_CLIENT_PREFIX, parse_mqtt_url
from shared.services import certificates
from shared.tls import ensure_server_certificate

TENANT = "bench"
THING = "aws-bench-1"
WARM_UP = 20


async def issue(database_url: str, out: Path) -> dict[str, Path]:
    key_pem, csr_pem = device_certs.new_device_key_and_csr(THING)
    conn = await db.connect(database_url, application_name="bench")
    try:
        async with conn.transaction():
            issued = await certificates.issue(
                conn,
                tenant_id=TENANT,
                device_id=THING,
                csr_pem=csr_pem,
                passphrase=device_trust.ca_passphrase(),
            )
    finally:
        await conn.close()
    device_trust.add(issued.trust)
    return await asyncio.to_thread(write_files, out, key_pem, issued.certificate_pem)


def write_files(out: Path, key_pem: str, certificate_pem: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "device.key").write_text(key_pem)
    (out / "device.pem").write_text(certificate_pem)
    return {"key": out / "device.key", "cert": out / "device.pem"}


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"  {name:<44} p50 {percentile(ms, 0.5):6.2f} ms   p99 {percentile(ms, 0.99):6.2f} ms"
        f"   max {max(ms):6.2f} ms   {len(values) / sum(values):6.0f}/s"
    )


class Device:
    """The awscrt connection, with one waiter per client token on ``update/accepted``."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.loop = asyncio.get_running_loop()
        self.waiting: dict[str, asyncio.Future[None]] = {}

    def answered(self, token: str | None) -> None:
        future = self.waiting.pop(token or "", None)
        if future is not None:
            self.loop.call_soon_threadsafe(future.set_result, None)

    async def round_trip(self, publish: Any) -> float:
        token = uuid.uuid4().hex
        future: asyncio.Future[None] = self.loop.create_future()
        self.waiting[token] = future
        started = time.perf_counter()
        publish(token)
        await asyncio.wait_for(future, 10)
        return time.perf_counter() - started


async def echo(client: aiomqtt.Client, reply_topic: str) -> None:
    """The ceiling's answering side: accepted at once, no database."""
    async for message in client.messages:
        body = orjson.loads(message.payload)  # type: ignore[arg-type]
        await client.publish(
            reply_topic,
            orjson.dumps({"version": 1, "clientToken": body.get("clientToken")}),
            qos=1,
        )


async def main(updates: int) -> dict[str, float]:
    print(f"AWS shadow benchmark on {machine()}")
    async with scratch(with_broker=False) as lab:
        os.environ["IOTCLOUD_DEVICE_TRUST_DIR"] = str(lab.home / "device-trust")
        os.environ["IOTCLOUD_DEVICE_CA_SECRET"] = secrets.token_urlsafe(24)
        server = ensure_server_certificate(lab.home / "server")
        assert server.ca is not None
        lab.broker = Broker(
            lab.home / "broker",
            free_port(),
            lab.database_url,
            tls_port=free_port(),
            cert_port=free_port(),
            device_trust=lab.home / "device-trust",
        )
        lab.broker.start(tls=server)
        try:
            await lab.tenant(TENANT)
            await provision_fleet(lab.database_url, tenant_id=TENANT, device_ids=[THING])
            files = await issue(lab.database_url, lab.home / "device")
            measured, ceiling = await measure(lab, {**files, "ca": server.ca}, updates)
        finally:
            lab.broker.kill()
    p50, ceiling_p50 = percentile(measured, 0.5), percentile(ceiling, 0.5)
    print(
        f"aws shadow: {updates} sequential updates, one awscrt device over mutual TLS\n"
        + summary("update -> update/accepted (ingest_iot)", measured)
        + "\n"
        + summary("bare-broker ceiling (answer, no database)", ceiling)
        + f"\n  p50 against the ceiling: {ratio(p50, ceiling_p50)}"
    )
    return {"p50": p50, "p99": percentile(measured, 0.99), "ceiling_p50": ceiling_p50}


async def measure(
    lab: Scratch, files: dict[str, Path], updates: int
) -> tuple[list[float], list[float]]:
    from awsiot import mqtt_connection_builder

    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost",
        port=lab.broker.cert_port,
        cert_filepath=str(files["cert"]),
        pri_key_filepath=str(files["key"]),
        ca_filepath=str(files["ca"]),
        client_id=THING,
        clean_session=True,
        keep_alive_secs=30,
    )
    await asyncio.wrap_future(connection.connect())
    device = Device(connection)
    update_topic = f"$aws/things/{THING}/shadow/update"
    try:
        measured = await through_ingest(lab, device, updates)
        ceiling = await through_echo(lab, device, update_topic, updates)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(connection.disconnect())
    return measured, ceiling


async def through_ingest(lab: Scratch, device: Device, updates: int) -> list[float]:
    """The product: ingest_iot answers after its transaction commits."""
    from awscrt import mqtt
    from awsiot import iotshadow

    # AWS's per-thing limit (20/s, IOTCLOUD_SHADOW_RPS) would answer most of a tight loop
    # with 429: the round trip is what is measured here, not the limit.
    ingest = lab.service("ingest", IOTCLOUD_SHADOW_RPS="1000000")
    ingest.start()
    measured: list[float] = []
    try:
        await ingest.wait_ready()
        shadow = iotshadow.IotShadowClient(device.connection)
        subscribed, _ = shadow.subscribe_to_update_shadow_accepted(
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=THING),
            mqtt.QoS.AT_LEAST_ONCE,
            lambda response: device.answered(response.client_token),
        )
        await asyncio.wrap_future(subscribed)
        for n in range(updates + WARM_UP):
            took = await device.round_trip(
                lambda token, n=n: shadow.publish_update_shadow(
                    iotshadow.UpdateShadowRequest(
                        thing_name=THING,
                        state=iotshadow.ShadowState(reported={"seq": n}),
                        client_token=token,
                    ),
                    mqtt.QoS.AT_LEAST_ONCE,
                )
            )
            if n >= WARM_UP:
                measured.append(took)
    finally:
        ingest.stop()
    return measured


async def through_echo(
    lab: Scratch, device: Device, update_topic: str, updates: int
) -> list[float]:
    """The ceiling, once ingest_iot has stopped: the same device and broker, answered at
    once by a client with nothing behind it."""
    from awscrt import mqtt

    target = parse_mqtt_url(lab.broker.url)
    ceiling: list[float] = []
    async with aiomqtt.Client(
        target.host,
        target.port,
        username=target.username,
        password=target.password,
        identifier=f"{SERVICE_CLIENT_PREFIX}bench-echo",
        socket_options=NO_DELAY,  # as ingest_iot's own connection
    ) as echoer:
        await echoer.subscribe(update_topic, qos=1)
        answering = asyncio.create_task(echo(echoer, f"{update_topic}/accepted"), name="bench-echo")
        for n in range(updates + WARM_UP):
            took = await device.round_trip(
                lambda token, n=n: device.connection.publish(
                    update_topic,
                    orjson.dumps({"state": {"reported": {"seq": n}}, "clientToken": token}),
                    mqtt.QoS.AT_LEAST_ONCE,
                )
            )
            if n >= WARM_UP:
                ceiling.append(took)
        answering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await answering
    return ceiling


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.updates))
