"""Broker restart at fleet scale: what ``ingest_iot`` publishes again when the broker comes
back, with its retained store and without it.

N devices (default 100,000) are provisioned the real way (``provision_fleet``, a token
each), one operator's bulk desired job (``POST /customer/fleet/desired``, filter ``{}``)
writes a desired state on every one, and the running ``ingest_iot`` publishes them all
(desired_version = published_version everywhere). Then:

(a) the broker is stopped cleanly (SIGTERM: it saves its store) and started again; the
    desired messages ``ingest_iot`` publishes in the next 30 s (its
    ``iotcloud_desired_published_total``) are counted. Goal: under 1 % of the fleet.
(b) the broker is killed, its store deleted and a fresh one started: the time until the
    publisher has refilled every device's retained message, while a device subscribed to
    its desired topic gets an operator's PATCH every 200 ms; the PATCH-to-device latency
    during the fill is printed beside the same measurement before it (quiet), same run.

    .venv/bin/python bench/broker_restart.py [--devices 100000] [--quiet-s 15]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from dataclasses import dataclass, field

import aiomqtt
import httpx
from fanout import Device
from harness import Scratch, machine, operator_headers, percentile, scratch
from prometheus_client.parser import text_string_to_metric_families

from iotcloud.provisioning import provision_fleet
from shared import db
from shared.mqtt import parse_mqtt_url
from shared.topics import desired_topic

TENANT = "bench"
FAN_DEVICE = "fan-1"
WINDOW_S = 30.0


async def published_total(ingest: httpx.AsyncClient) -> float:
    answer = await ingest.get("/metrics")
    answer.raise_for_status()
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == "iotcloud_desired_published_total":
                return float(sample.value)
    return 0.0


async def behind(conn: db.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM device_state WHERE published_version <> desired_version"
        )
    )


async def until(check: object, timeout: float, what: str) -> float:
    started = time.perf_counter()
    while not await check():  # type: ignore[operator]
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.1)
    return time.perf_counter() - started


@dataclass
class Writer:
    """An operator PATCHing the fan-out device's desired state every 200 ms, each timed
    until the device holds that version: (sent at, PATCH -> device) pairs."""

    api: httpx.AsyncClient
    device: Device
    samples: list[tuple[float, float]] = field(default_factory=list)
    n: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        path = f"/customer/devices/{FAN_DEVICE}/twin/desired"
        while not stop.is_set():
            self.n += 1
            sent = time.perf_counter()
            answer = await self.api.patch(path, json={"desired": {"setpoint": self.n}})
            answer.raise_for_status()
            await asyncio.wait_for(self.device.wait_for(answer.json()["desired_version"]), 30)
            self.samples.append((sent, time.perf_counter() - sent))
            await asyncio.sleep(max(0.0, 0.2 - (time.perf_counter() - sent)))

    def between(self, start: float, end: float) -> list[float]:
        return [latency for sent, latency in self.samples if start <= sent < end]


def latency(values: list[float]) -> str:
    if not values:
        return "(no writes in this window)"
    ms = [v * 1000 for v in values]
    return (
        f"p50 {percentile(ms, 0.5):6.2f} ms  p99 {percentile(ms, 0.99):7.2f} ms  "
        f"max {max(ms):7.2f} ms  ({len(ms)} writes)"
    )


async def with_device(
    lab: Scratch,
    token: str,
    api: httpx.AsyncClient,
    seconds: float | None,
    conn: db.Connection,
    fill_from: float | None,
) -> tuple[Writer, float, float]:
    """The device connected and the writer running, for ``seconds`` or, with ``fill_from``,
    until the fresh broker holds every desired state again: then also when, from
    ``fill_from``, the publisher found the broker and when the fill ended."""
    target = parse_mqtt_url(lab.broker.url)
    device = Device()
    writer = Writer(api, device)
    stop = asyncio.Event()
    filled = found_at = 0.0
    async with (
        aiomqtt.Client(
            target.host, target.port, username=FAN_DEVICE, password=token, identifier=FAN_DEVICE
        ) as client,
        asyncio.TaskGroup() as tasks,
    ):
        await client.subscribe(desired_topic(TENANT, FAN_DEVICE), qos=1)
        listening = tasks.create_task(device.listen(client))
        writing = tasks.create_task(writer.run(stop))
        if fill_from is None:
            assert seconds is not None
            await asyncio.sleep(seconds)
        else:
            epoch = await conn.fetchval("SELECT epoch FROM broker_delivery")

            async def found() -> bool:
                # The publisher is back and has seen a broker without its marker.
                return await conn.fetchval("SELECT epoch FROM broker_delivery") != epoch

            async def refilled() -> bool:
                return await conn.fetchval("SELECT resync_after IS NULL FROM broker_delivery")

            await until(found, 120, "ingest_iot finding the fresh broker")
            found_at = time.perf_counter() - fill_from
            await until(refilled, 1800, "the fresh broker's fill")
            filled = time.perf_counter() - fill_from
        stop.set()
        await writing
        listening.cancel()
    return writer, found_at, filled


async def main(devices: int, quiet_s: float) -> None:
    print(f"broker restart benchmark on {machine()}")
    async with scratch() as lab:
        await lab.tenant(TENANT)
        started = time.perf_counter()
        tokens = await provision_fleet(
            lab.database_url,
            tenant_id=TENANT,
            device_ids=[FAN_DEVICE, *(f"r-{i:07d}" for i in range(1, devices))],
        )
        print(f"  {devices:,} devices provisioned in {time.perf_counter() - started:.1f} s")
        ui, ingest = lab.service("ui"), lab.service("ingest")
        ui.start()
        ingest.start()
        conn = await db.connect(lab.database_url, application_name="bench")
        try:
            await ui.wait_ready()
            await ingest.wait_ready()
            async with (
                httpx.AsyncClient(
                    base_url=ui.url, headers=operator_headers(TENANT), timeout=30
                ) as api,
                httpx.AsyncClient(base_url=ingest.url, timeout=10) as metrics,
            ):
                started = time.perf_counter()
                queued = await api.post(
                    "/customer/fleet/desired",
                    json={"filter": {}, "desired": {"firmware": {"version": "2.4.1"}}},
                )
                queued.raise_for_status()

                async def all_written_and_published() -> bool:
                    written = await conn.fetchval(
                        "SELECT count(*) FROM device_state WHERE desired_version > 0"
                    )
                    return written == devices and await behind(conn) == 0

                await until(all_written_and_published, 1800, "the bulk job and its publishing")
                print(
                    f"  bulk desired job written and every device's desired state published "
                    f"in {time.perf_counter() - started:.1f} s"
                )
                await asyncio.sleep(6)  # past the broker's autosave interval (5 s)

                # (a) clean restart, store kept
                before = await published_total(metrics)
                lab.broker.stop()
                lab.broker.start()
                await asyncio.sleep(WINDOW_S)
                republished = await published_total(metrics) - before
                share = 100 * republished / devices
                # The publisher is back on the restarted broker: one write goes out.
                patched = await api.patch(
                    "/customer/devices/r-0000001/twin/desired", json={"desired": {"probe": 1}}
                )
                patched.raise_for_status()

                async def one_more_published() -> bool:
                    return await published_total(metrics) - before > republished

                await until(one_more_published, 30, "a desired write after the restart")
                print(
                    f"  (a) clean restart, store kept: {republished:,.0f} desired messages "
                    f"published in the next {WINDOW_S:.0f} s = {share:.3f} % of {devices:,} "
                    "(goal < 1 %); a desired write after it went out",
                    flush=True,
                )

                # (b) fresh broker: quiet fan-out, then the fill with fan-out alongside
                quiet, _, _ = await with_device(lab, tokens[FAN_DEVICE], api, quiet_s, conn, None)
                before = await published_total(metrics)
                lab.broker.kill()
                shutil.rmtree(lab.broker.embedded.root / "data")
                fill_from = time.perf_counter()
                lab.broker.start()
                during, found_s, fill_s = await with_device(
                    lab, tokens[FAN_DEVICE], api, None, conn, fill_from
                )
                refilled = await published_total(metrics) - before
                busy = during.between(fill_from + found_s, fill_from + fill_s)
                waited = during.between(fill_from, fill_from + found_s)
                calm = [v for _, v in quiet.samples]
                print(
                    f"  (b) fresh empty broker: every desired state back in {fill_s:.1f} s "
                    f"({refilled:,.0f} published, {refilled / fill_s:,.0f}/s)\n"
                    f"      fan-out PATCH -> device, quiet before:  {latency(calm)}\n"
                    f"      fan-out PATCH -> device, during fill:   {latency(busy)}\n"
                    f"      (ingest_iot found the fresh broker {found_s:.1f} s after its start; "
                    f"{len(waited)} writes sent before then waited for that, not counted)",
                    flush=True,
                )
        finally:
            await conn.close()
            ui.stop()
            ingest.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--quiet-s", type=float, default=15.0)
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.quiet_s))
