"""Simulated devices that really speak MQTT (or HTTP) with their own credentials.

Each applies the desired state it receives and reports it back with that version; with
``rate`` it also reports a changing reading that often, as a live device would.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import aiomqtt
import httpx
import orjson

from iotcloud.provisioning import provision_fleet
from shared.mqtt import backoff_delays, parse_mqtt_url
from shared.topics import desired_topic, reported_topic


@dataclass
class Counters:
    connected: int = 0
    desired_received: int = 0
    reports_sent: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def line(self, total: int) -> str:
        return (
            f"{self.connected}/{total} connected, {self.desired_received} desired received, "
            f"{self.reports_sent} reports sent, {self.accepted} accepted, {self.rejected} rejected"
        )


async def _mqtt_device(
    host: str,
    port: int,
    tenant_id: str,
    device_id: str,
    token: str,
    rate: float,
    apply_delay: float,
    counters: Counters,
) -> None:
    version = 0
    desired: dict[str, object] = {}
    next_delay = backoff_delays()
    while True:
        try:
            async with aiomqtt.Client(
                host, port, username=device_id, password=token, identifier=device_id, keepalive=30
            ) as client:
                counters.connected += 1
                try:
                    await client.subscribe(desired_topic(tenant_id, device_id), qos=1)
                    await client.subscribe(reported_topic(tenant_id, device_id) + "/+", qos=1)
                    await _mqtt_loop(
                        client, tenant_id, device_id, rate, apply_delay, counters, version, desired
                    )
                finally:
                    counters.connected -= 1
        except (aiomqtt.MqttError, ExceptionGroup) as exc:
            # Includes a refused login (token rotated by an operator): keep trying, slowly.
            counters.errors.append(f"{device_id}: {exc!r}")
            del counters.errors[:-100]
            await asyncio.sleep(next_delay())


async def _mqtt_loop(
    client: aiomqtt.Client,
    tenant_id: str,
    device_id: str,
    rate: float,
    apply_delay: float,
    counters: Counters,
    version: int,
    desired: dict[str, object],
) -> None:
    async def report(state: dict[str, object]) -> None:
        body = {"reported": state, "version": version}
        await client.publish(reported_topic(tenant_id, device_id), orjson.dumps(body), qos=1)
        counters.reports_sent += 1

    async def readings() -> None:
        while rate > 0:
            await asyncio.sleep(random.expovariate(rate))
            await report({"temperature_c": round(random.uniform(18, 26), 2)})  # noqa: S311

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(readings(), name=f"{device_id}-readings")
        async for message in client.messages:
            if not isinstance(message.payload, bytes) or not message.payload:
                continue
            body = orjson.loads(message.payload)
            if message.topic.value.endswith("/accepted"):
                counters.accepted += 1
            elif message.topic.value.endswith("/rejected"):
                counters.rejected += 1
            elif isinstance(body.get("desired"), dict) and isinstance(body.get("version"), int):
                counters.desired_received += 1
                version, desired = body["version"], body["desired"]
                if apply_delay > 0:  # a real device takes a moment to apply a configuration
                    await asyncio.sleep(random.uniform(0.5, 1.5) * apply_delay)  # noqa: S311
                await report(desired)


async def _http_device(base_url: str, token: str, counters: Counters, rate: float) -> None:
    applied = -1
    async with httpx.AsyncClient(base_url=base_url, headers={"X-Provision-Token": token}) as http:
        counters.connected += 1
        last_reading = time.monotonic()
        while True:
            with contextlib.suppress(httpx.HTTPError):
                shadow = (await http.get("/device/v1/shadow")).json()
                state = None
                if shadow["version"] != applied:
                    counters.desired_received += 1
                    state = shadow["desired"]
                elif rate > 0 and time.monotonic() - last_reading > 1 / rate:
                    state, last_reading = (
                        {"temperature_c": round(random.uniform(18, 26), 2)},  # noqa: S311
                        time.monotonic(),
                    )
                if state is not None:
                    answer = await http.post(
                        "/device/v1/shadow/reported",
                        json={"reported": state, "version": shadow["version"]},
                    )
                    counters.reports_sent += 1
                    if answer.status_code == 200:
                        counters.accepted += 1
                        applied = shadow["version"]
                    else:
                        counters.rejected += 1
            await asyncio.sleep(1.0)


async def simulate(
    database_url: str,
    mqtt_url: str,
    *,
    tenant_id: str,
    count: int,
    rate: float,
    http_url: str | None,
    duration: float,
    prefix: str,
    apply_delay: float = 0.0,
    progress_every: float = 2.0,
) -> Counters:
    ids = [f"{prefix}-{n:05d}" for n in range(1, count + 1)]
    started = time.monotonic()
    tokens = await provision_fleet(database_url, mqtt_url, tenant_id=tenant_id, device_ids=ids)
    print(f"provisioned {len(tokens)} devices in {time.monotonic() - started:.1f}s", flush=True)
    target = parse_mqtt_url(mqtt_url)
    counters = Counters()
    async with asyncio.TaskGroup() as tasks:
        devices = [
            tasks.create_task(
                _http_device(http_url, token, counters, rate)
                if http_url
                else _mqtt_device(
                    target.host,
                    target.port,
                    tenant_id,
                    device_id,
                    token,
                    rate,
                    apply_delay,
                    counters,
                ),
                name=device_id,
            )
            for device_id, token in tokens.items()
        ]
        deadline = started + duration if duration > 0 else None
        last_line = ""
        while deadline is None or time.monotonic() < deadline:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            await asyncio.sleep(
                min(progress_every, remaining) if remaining is not None else progress_every
            )
            line = counters.line(count)
            if line != last_line:
                print(line, flush=True)
                last_line = line
        for device in devices:
            device.cancel()
    print("summary: " + counters.line(count), flush=True)
    return counters
