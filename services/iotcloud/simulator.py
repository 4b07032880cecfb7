"""Simulated devices that really speak MQTT (or HTTP) with their own credentials.

They follow the device contract of docs/devices.md: each applies the desired state it
receives and reports it back with that version; every new state carries a higher ``seq``
and its own ``clientToken``; a report is done when ``/reported/accepted`` with its
clientToken arrives, and until then the device resends its latest state. With
``rate`` it also reports a changing reading that often, as a live device would; with
``burst`` each sends that many readings back to back once every device is connected (the
ingest benchmark's load). The fleet is provisioned in one transaction, and every device
holds its own MQTT connection (a few thousand fit in one process; connects are paced so
the broker's accept queue never overflows). With ``reject`` (a key, optionally with a value)
each device refuses any desired version that sets that key (to that value), as SPEC §11 lets
a device do, instead of applying it.
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
from shared.mqtt import NO_DELAY, backoff_delays, parse_mqtt_url, publish_nowait, streamline
from shared.topics import desired_topic, reported_topic

_CONNECTING_AT_ONCE = 64
_ANY = object()


@dataclass(frozen=True)
class RejectRule:
    """Refuse a desired state whose top-level ``key`` is set (to ``value``, if given)."""

    key: str
    value: object = _ANY

    @classmethod
    def parse(cls, text: str) -> RejectRule:
        """``key`` or ``key=<JSON value>`` (a value that is not JSON is taken as a string)."""
        key, sep, raw = text.partition("=")
        if not key:
            raise ValueError(f"--reject-key {text!r}: expected KEY or KEY=VALUE")
        if not sep:
            return cls(key)
        try:
            return cls(key, orjson.loads(raw))
        except orjson.JSONDecodeError:
            return cls(key, raw)

    def refuses(self, desired: dict[str, object]) -> bool:
        if self.key not in desired:
            return False
        return self.value is _ANY or desired[self.key] == self.value


@dataclass
class DeviceState:
    """What a device keeps across reconnects (a real one: in flash)."""

    device_id: str
    version: int = 0
    desired: dict[str, object] = field(default_factory=dict)
    seq: int = 0
    pending: bytes | None = None  # the latest report, until it is accepted
    pending_token: str | None = None
    sent_at: float = 0.0

    def new_report(self, state: dict[str, object]) -> bytes:
        """The device's latest state as a report; it replaces any not yet accepted."""
        self.seq += 1
        self.pending_token = f"{self.device_id}-{self.seq}"
        self.pending = orjson.dumps(
            {
                "reported": state,
                "version": self.version,
                "clientToken": self.pending_token,
                "seq": self.seq,
            }
        )
        self.sent_at = time.monotonic()
        return self.pending

    def new_rejection(self, version: int, key: str) -> bytes:
        """A refusal of desired ``version`` (SPEC §11); the device keeps what it applied."""
        self.seq += 1
        self.pending_token = f"{self.device_id}-{self.seq}"
        self.pending = orjson.dumps(
            {
                "version": version,
                "rejected": {"code": "unsupported", "message": f"cannot apply {key!r}"},
                "clientToken": self.pending_token,
                "seq": self.seq,
            }
        )
        self.sent_at = time.monotonic()
        return self.pending

    def accepted(self, client_token: object) -> None:
        if client_token == self.pending_token:
            self.pending = self.pending_token = None


@dataclass
class Counters:
    connected: int = 0
    desired_received: int = 0
    reports_sent: int = 0
    resends: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    all_connected: asyncio.Event = field(default_factory=asyncio.Event)
    connecting: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(_CONNECTING_AT_ONCE)
    )
    started: float = field(default_factory=time.monotonic)

    def line(self, total: int) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"{self.connected}/{total} connected, {self.desired_received} desired received, "
            f"{self.reports_sent} reports sent ({self.reports_sent / elapsed:,.0f}/s, "
            f"{self.resends} resent), "
            f"{self.accepted} accepted, {self.rejected} rejected"
        )


async def _mqtt_device(
    host: str,
    port: int,
    tenant_id: str,
    device_id: str,
    token: str,
    rate: float,
    burst: int,
    apply_delay: float,
    counters: Counters,
    total: int,
    resend_after: float,
    reject: RejectRule | None = None,
) -> None:
    device = DeviceState(device_id)
    next_delay = backoff_delays()
    while True:
        try:
            async with contextlib.AsyncExitStack() as session:
                client = aiomqtt.Client(
                    host,
                    port,
                    username=device_id,
                    password=token,
                    identifier=device_id,
                    keepalive=60,
                    timeout=30,
                    socket_options=NO_DELAY,
                )
                streamline(client, NO_DELAY)
                async with counters.connecting:
                    await session.enter_async_context(client)
                counters.connected += 1
                session.callback(_disconnected, counters)
                await client.subscribe(desired_topic(tenant_id, device_id), qos=1)
                await client.subscribe(reported_topic(tenant_id, device_id) + "/+", qos=1)
                if counters.connected >= total:
                    counters.all_connected.set()
                await _mqtt_loop(
                    client,
                    tenant_id,
                    device,
                    rate,
                    burst,
                    apply_delay,
                    counters,
                    resend_after,
                    reject,
                )
        except (aiomqtt.MqttError, ExceptionGroup) as exc:
            # Includes a refused login (token rotated by an operator): keep trying, slowly.
            counters.errors.append(f"{device_id}: {exc!r}")
            del counters.errors[:-100]
            if counters.all_connected.is_set():
                burst = 0  # a device that reconnects does not burst again
            await asyncio.sleep(next_delay())


def _disconnected(counters: Counters) -> None:
    counters.connected -= 1


async def _mqtt_loop(
    client: aiomqtt.Client,
    tenant_id: str,
    device: DeviceState,
    rate: float,
    burst: int,
    apply_delay: float,
    counters: Counters,
    resend_after: float,
    reject: RejectRule | None = None,
) -> None:
    device_id = device.device_id
    refused_version = 0
    topic = reported_topic(tenant_id, device_id)

    def report_body(state: dict[str, object]) -> bytes:
        return device.new_report(state)

    async def report(state: dict[str, object]) -> None:
        await client.publish(topic, report_body(state), qos=1)
        counters.reports_sent += 1

    def reading() -> dict[str, object]:
        # "sample" lets a benchmark check that each device's readings applied in order.
        return {"temperature_c": round(random.uniform(18, 26), 2), "sample": device.seq + 1}  # noqa: S311

    async def resend() -> None:
        """The latest state again while it waits for its /accepted (and at once after a
        reconnect): never an older one."""
        while resend_after > 0:
            if device.pending is not None and (time.monotonic() - device.sent_at >= resend_after):
                device.sent_at = time.monotonic()
                await client.publish(topic, device.pending, qos=1)
                counters.resends += 1
            await asyncio.sleep(1.0)

    device.sent_at = 0.0  # a report still pending goes out again on this connection

    async def readings() -> None:
        if burst > 0:
            await counters.all_connected.wait()
            # Back to back, as a device flushing what it buffered offline: paho keeps its
            # in-flight window full, and each reading counts once the broker acknowledged it.
            sent = [publish_nowait(client, topic, report_body(reading())) for _ in range(burst)]
            for info in sent:
                while not info.is_published():  # noqa: ASYNC110 - paho offers no awaitable
                    await asyncio.sleep(0.01)
                counters.reports_sent += 1
        while rate > 0:
            await asyncio.sleep(random.expovariate(rate))
            await report(reading())

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(readings(), name=f"{device_id}-readings")
        tasks.create_task(resend(), name=f"{device_id}-resend")
        async for message in client.messages:
            if not isinstance(message.payload, bytes) or not message.payload:
                continue
            body = orjson.loads(message.payload)
            if message.topic.value.endswith("/accepted"):
                counters.accepted += 1
                device.accepted(body.get("clientToken"))
            elif message.topic.value.endswith("/rejected"):
                counters.rejected += 1
                if body.get("clientToken") == device.pending_token:
                    device.pending = None  # refused as it is: the next state replaces it
            elif isinstance(body.get("desired"), dict) and isinstance(body.get("version"), int):
                if body["version"] <= device.version and device.version > 0:
                    continue  # the retained copy of what is applied already
                if body["version"] <= refused_version:
                    continue  # refused already
                counters.desired_received += 1
                if reject is not None and reject.refuses(body["desired"]):
                    refused_version = body["version"]
                    rejection = device.new_rejection(body["version"], reject.key)
                    await client.publish(topic, rejection, qos=1)
                    counters.reports_sent += 1
                    continue
                device.version, device.desired = body["version"], body["desired"]
                if apply_delay > 0:  # a real device takes a moment to apply a configuration
                    await asyncio.sleep(random.uniform(0.5, 1.5) * apply_delay)  # noqa: S311
                await report(device.desired)


async def _http_device(
    base_url: str,
    token: str,
    counters: Counters,
    rate: float,
    reject: RejectRule | None = None,
) -> None:
    """Over HTTP the answer is the acknowledgement: a report that got none (an error, a 503)
    stays the device's latest and is sent again on the next round."""
    device = DeviceState(token[-8:])
    applied = -1
    async with httpx.AsyncClient(base_url=base_url, headers={"X-Provision-Token": token}) as http:
        counters.connected += 1
        last_reading = time.monotonic()
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                shadow = (await http.get("/device/v1/shadow")).json()
                if shadow["version"] != applied:
                    counters.desired_received += 1
                    if reject is not None and reject.refuses(shadow["desired"]):
                        applied = shadow["version"]
                        device.new_rejection(shadow["version"], reject.key)
                    else:
                        device.version, applied = shadow["version"], shadow["version"]
                        device.new_report(shadow["desired"])
                elif rate > 0 and time.monotonic() - last_reading > 1 / rate:
                    last_reading = time.monotonic()
                    device.new_report({"temperature_c": round(random.uniform(18, 26), 2)})  # noqa: S311
                if device.pending is not None:
                    answer = await http.post(
                        "/device/v1/shadow/reported",
                        content=device.pending,
                        headers={"Content-Type": "application/json"},
                    )
                    counters.reports_sent += 1
                    if answer.status_code == 200:
                        counters.accepted += 1
                        device.pending = None
                    elif answer.status_code < 500:
                        counters.rejected += 1
                        device.pending = None  # refused as it is; a newer state follows
                        applied = -1
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
    burst: int = 0,
    resend_after: float = 5.0,
    reject: RejectRule | None = None,
) -> Counters:
    """Run ``count`` devices for ``duration`` seconds (0: until stopped, or with ``burst``
    over MQTT until every device has sent its burst); prints progress and a summary."""
    ids = [f"{prefix}-{n:05d}" for n in range(1, count + 1)]
    started = time.monotonic()
    tokens = await provision_fleet(database_url, tenant_id=tenant_id, device_ids=ids)
    print(f"provisioned {len(tokens)} devices in {time.monotonic() - started:.1f}s", flush=True)
    target = parse_mqtt_url(mqtt_url)
    counters = Counters()
    bursting = burst > 0 and http_url is None
    burst_total = count * burst
    async with asyncio.TaskGroup() as tasks:
        devices = [
            tasks.create_task(
                _http_device(http_url, token, counters, rate, reject)
                if http_url
                else _mqtt_device(
                    target.host,
                    target.port,
                    tenant_id,
                    device_id,
                    token,
                    rate,
                    burst,
                    apply_delay,
                    counters,
                    count,
                    resend_after,
                    reject,
                ),
                name=device_id,
            )
            for device_id, token in tokens.items()
        ]
        deadline = started + duration if duration > 0 else None
        last_line, last_print = "", time.monotonic()
        announced = False
        while deadline is None or time.monotonic() < deadline:
            if not announced and counters.all_connected.is_set():
                elapsed = time.monotonic() - started
                print(f"all {count} devices connected at {elapsed:.1f}s", flush=True)
                announced = True
            if bursting and counters.reports_sent >= burst_total and duration <= 0:
                break
            await asyncio.sleep(0.05 if bursting else min(progress_every, 0.5))
            if time.monotonic() - last_print < progress_every:
                continue
            line, last_print = counters.line(count), time.monotonic()
            if line != last_line:
                print(line, flush=True)
                last_line = line
        if bursting and counters.reports_sent >= burst_total:
            print(
                f"burst: {burst_total} reports sent, QoS 1 acknowledged by the broker",
                flush=True,
            )
        for device in devices:
            device.cancel()
    print("summary: " + counters.line(count), flush=True)
    return counters
