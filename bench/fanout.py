"""Fan-out: PATCH desired -> the device's MQTT client holds the new retained version.

A device connected with its own credentials waits on its desired topic while the bench
makes N sequential ``PATCH .../twin/desired`` calls through ``ui_iot``; each latency runs
from sending the PATCH to the device receiving that version (commit, NOTIFY, the
``ingest_iot`` publisher, the broker). Side by side, in the same run: the PATCH's own
response time, and the broker's floor — the same retained QoS 1 message published straight
to the topic by a service client until the device has it.

    .venv/bin/python bench/fanout.py [--writes 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiomqtt
import httpx
import orjson
from harness import machine, operator_headers, percentile, profile, scratch

from iotcloud.provisioning import provision_fleet
from shared.mqtt import SERVICE_CLIENT_PREFIX, parse_mqtt_url
from shared.topics import desired_topic

TENANT = "bench"


class Device:
    """The device's view: the latest retained desired version it has received."""

    def __init__(self) -> None:
        self.version = -1
        self.changed = asyncio.Event()

    async def listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if isinstance(message.payload, bytes) and message.payload:
                self.version = orjson.loads(message.payload)["version"]
                self.changed.set()

    async def wait_for(self, version: int) -> None:
        while self.version < version:
            self.changed.clear()
            await self.changed.wait()


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"  {name:<44} p50 {percentile(ms, 0.5):6.2f} ms   p99 {percentile(ms, 0.99):6.2f} ms"
        f"   max {max(ms):6.2f} ms"
    )


async def main(writes: int, profiled_service: str | None) -> dict[str, float]:
    print(f"fan-out benchmark on {machine()}")
    async with scratch() as lab:
        await lab.tenant(TENANT)
        (device_id, token), *_ = (
            await provision_fleet(lab.database_url, tenant_id=TENANT, device_ids=["fan-1"])
        ).items()
        ui, ingest = lab.service("ui"), lab.service("ingest")
        ui.start()
        ingest.start()
        try:
            await ui.wait_ready()
            await ingest.wait_ready()
            target = parse_mqtt_url(lab.broker.url)
            topic = desired_topic(TENANT, device_id)
            device = Device()
            async with (
                aiomqtt.Client(
                    target.host,
                    target.port,
                    username=device_id,
                    password=token,
                    identifier=device_id,
                ) as device_client,
                aiomqtt.Client(
                    target.host,
                    target.port,
                    username=target.username,
                    password=target.password,
                    identifier=f"{SERVICE_CLIENT_PREFIX}bench-fanout",
                ) as service_client,
                httpx.AsyncClient(base_url=ui.url, headers=operator_headers(TENANT)) as api,
                asyncio.TaskGroup() as tasks,
            ):
                await device_client.subscribe(topic, qos=1)
                listening = tasks.create_task(device.listen(device_client))
                path = f"/customer/devices/{device_id}/twin/desired"
                end_to_end: list[float] = []
                responses: list[float] = []
                profiled = None
                for n in range(writes + 20):  # the first 20 warm up
                    if profiled_service is not None and n == 20:
                        watched = ui if profiled_service == "ui" else ingest
                        assert watched.process is not None
                        profiled = asyncio.create_task(
                            asyncio.to_thread(profile, watched.process.pid, 4)
                        )
                    started = time.perf_counter()
                    answer = await api.patch(path, json={"desired": {"setpoint": n}})
                    answered = time.perf_counter()
                    answer.raise_for_status()
                    await asyncio.wait_for(device.wait_for(answer.json()["desired_version"]), 10)
                    if n >= 20:
                        end_to_end.append(time.perf_counter() - started)
                        responses.append(answered - started)
                floor: list[float] = []
                version = device.version
                for _ in range(writes):
                    version += 1
                    body = orjson.dumps({"desired": {"setpoint": -1}, "version": version})
                    started = time.perf_counter()
                    await service_client.publish(topic, body, qos=1, retain=True)
                    await asyncio.wait_for(device.wait_for(version), 10)
                    floor.append(time.perf_counter() - started)
                listening.cancel()
                frames = await profiled if profiled is not None else []
        finally:
            ui.stop()
            ingest.stop()
    print(
        f"fan-out: {writes} sequential desired writes, one device\n"
        + summary("PATCH -> device holds the new version", end_to_end)
        + "   (goal p99 <= 15 ms, p50 <= 5 ms)\n"
        + summary("  of which the PATCH response", responses)
        + "\n"
        + summary("broker floor: publish -> device has it", floor)
    )
    for frame in frames:
        print(f"    {frame}")
    return {
        "p50": percentile(end_to_end, 0.5),
        "p99": percentile(end_to_end, 0.99),
        "patch_p50": percentile(responses, 0.5),
        "floor_p50": percentile(floor, 0.5),
        "floor_p99": percentile(floor, 0.99),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--profile", choices=["ui", "ingest"], help="py-spy this service")
    args = parser.parse_args()
    asyncio.run(main(args.writes, args.profile))
