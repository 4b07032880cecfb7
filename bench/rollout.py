"""Staged rollout (SPEC §11) with the simulator answering over MQTT.

Starts ui_iot and ingest_iot as processes, a scratch database and broker, and ``iotcloud
simulate`` with D devices (each its own MQTT connection; ``--reject-key crash`` so that they
refuse any desired state setting ``crash``). Then, in one run:

1. a plain bulk desired job on the whole fleet: time until written, and until every device
   reported the version;
2. a 4-stage rollout (1, 10, 50, 100 %, synced_ratio 1.0, health ``/reported/fw == "2.0"``):
   time per stage (written, then gate passed), and the total against step 1;
3. a rollout the devices refuse (``{"crash": true}``, stages 10, 100 %, on_failure revert):
   time from the stage's failure to every written device holding the reverted desired state
   (the rollout's revert written), and to every one of them reporting it back.

    flock /tmp/iotcloud-bench.lock .venv/bin/python bench/rollout.py --devices 5000

With ``--http`` the devices answer over the device HTTP API instead (SPEC §6: ``GET
/device/v1/shadow``, ``POST /device/v1/shadow/reported``, each request with the device's own
``X-Provision-Token``), polled in turn by one process over ``--connections`` keep-alive
connections to ``ingest_iot``: each device polls once per sweep of the fleet rather than
holding an MQTT connection. That is how 100,000 devices fit this host: a process may hold
at most ``ulimit -Hn`` (20,000 here) descriptors, Mosquitto included, so 100,000 MQTT
connections cannot be open at once. The devices apply and report, or refuse, as
``iotcloud simulate`` does (its ``DeviceState`` and ``RejectRule``).

    flock /tmp/iotcloud-bench.lock .venv/bin/python bench/rollout.py --http --devices 100000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from bench.harness import Scratch, machine, operator_headers, scratch  # noqa: E402

from iotcloud.provisioning import provision_fleet  # noqa: E402
from iotcloud.simulator import DeviceState, RejectRule  # noqa: E402
from shared import db  # noqa: E402

TENANT = "bench"


async def start_simulator(lab: Scratch, devices: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "iotcloud.cli",
        "simulate",
        "--tenant",
        TENANT,
        "--devices",
        str(devices),
        "--prefix",
        "ro",
        "--progress-every",
        "3600",
        "--reject-key",
        "crash",
        env=lab.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    async for raw in process.stdout:
        line = raw.decode()
        if line.startswith("all ") and " connected " in line:
            print(f"simulator: {line.strip()}", flush=True)
            return process
    raise RuntimeError("the simulator ended before all its devices connected")


class HttpFleet:
    """Devices answering over HTTP, polled in turn (see the module's docstring)."""

    def __init__(self, url: str, tokens: dict[str, str], connections: int) -> None:
        self.url = url
        self.devices = [(DeviceState(device_id), token) for device_id, token in tokens.items()]
        self.applied = [-1] * len(self.devices)
        self.connections = connections
        self.reject = RejectRule.parse("crash")
        self.polls = self.reports = self.errors = 0
        self.next = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(self.worker()) for _ in range(self.connections)]
        self.tasks.append(asyncio.create_task(self.progress()))

    async def progress(self, every: float = 60.0) -> None:
        started, polls = time.monotonic(), 0
        while True:
            await asyncio.sleep(every)
            print(
                f"  (HTTP devices: {self.polls} polls, {(self.polls - polls) / every:.0f}/s "
                f"over the last {every:.0f} s; {self.reports} reports, {self.errors} errors; "
                f"{time.monotonic() - started:.0f} s)",
                flush=True,
            )
            polls = self.polls

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def worker(self) -> None:
        """One keep-alive connection. Plain HTTP/1.1 on asyncio streams: httpx cost the
        load generator about 5 ms of CPU per poll here (httpcore looks for sniffio on every
        request), so it, not the service, set the pace."""
        url = httpx.URL(self.url)
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while True:
            index = self.next
            self.next = (index + 1) % len(self.devices)
            try:
                if connection is None:
                    connection = await asyncio.open_connection(url.host, url.port)
                await self.poll(connection, index)
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError):
                self.errors += 1
                if connection is not None:
                    connection[1].close()
                connection = None
                await asyncio.sleep(0.1)

    @staticmethod
    async def request(
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        method: str,
        path: str,
        token: str,
        body: bytes = b"",
    ) -> tuple[int, bytes]:
        reader, writer = connection
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: ingest\r\nX-Provision-Token: {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return status, await reader.readexactly(length)

    async def poll(
        self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], index: int
    ) -> None:
        device, token = self.devices[index]
        status, body = await self.request(connection, "GET", "/device/v1/shadow", token)
        if status != 200:
            raise ValueError(f"GET /device/v1/shadow: {status}")
        shadow = orjson.loads(body)
        self.polls += 1
        if shadow["version"] != self.applied[index]:
            self.applied[index] = shadow["version"]
            if self.reject.refuses(shadow["desired"]):
                device.new_rejection(shadow["version"], self.reject.key)
            else:
                device.version = shadow["version"]
                device.new_report(shadow["desired"])
        if device.pending is not None:
            status, _ = await self.request(
                connection, "POST", "/device/v1/shadow/reported", token, device.pending
            )
            self.reports += 1
            if status < 500:
                device.pending = None
            if 400 <= status < 500:
                self.applied[index] = -1  # refused as it is: read desired again


async def wait_for(check: Any, *, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval)
    raise TimeoutError(f"not within {timeout} s")


async def bulk_job(ui: httpx.AsyncClient, devices: int) -> tuple[float, float]:
    started = time.monotonic()
    response = await ui.post("/customer/fleet/desired", json={"filter": {}, "desired": {"bulk": 1}})
    response.raise_for_status()
    job_id = response.json()["job_id"]
    written_at = 0.0

    async def synced() -> bool:
        nonlocal written_at
        job = (await ui.get(f"/customer/fleet/jobs/{job_id}")).json()
        if job["status"] == "done" and not written_at:
            written_at = time.monotonic() - started
        return bool(job["status"] == "done" and job["synced"] >= devices)

    await wait_for(synced, timeout=900, interval=0.2)
    return written_at, time.monotonic() - started


async def staged(ui: httpx.AsyncClient) -> tuple[list[dict[str, float]], float]:
    """Per stage: when it started, when all its devices were written, when its gate passed
    (seconds since the POST, as polled every 0.1 s)."""
    started = time.monotonic()
    response = await ui.post(
        "/customer/fleet/rollouts",
        json={
            "filter": {},
            "desired": {"fw": "2.0"},
            "stages": [1, 10, 50, 100],
            "success": {
                "synced_ratio": 1.0,
                "within_s": 600,
                "health": {"pointer": "/reported/fw", "op": "==", "value": "2.0"},
            },
        },
    )
    response.raise_for_status()
    rollout_id = response.json()["rollout_id"]
    marks: list[dict[str, float]] = []
    while True:
        document = (await ui.get(f"/customer/fleet/rollouts/{rollout_id}")).json()
        now = time.monotonic() - started
        done = document["state"] == "done"
        if not marks:
            marks = [{} for _ in document["stages"]]
        for index, stage in enumerate(document["stages"]):
            reached = done or index <= document["stage"]
            if reached:
                marks[index].setdefault("start", marks[index - 1]["passed"] if index else 0.0)
                if stage["written"] + stage["not_written"] >= stage["devices"]:
                    marks[index].setdefault("written", now)
            if (done or index < document["stage"]) and "passed" not in marks[index]:
                marks[index]["passed"] = now
                print(f"  (stage {index + 1} passed {now:.1f} s after the start)", flush=True)
        if done:
            return marks, now
        if document["state"] != "running":
            raise RuntimeError(f"rollout ended {document['state']}: {document['reason']}")
        await asyncio.sleep(0.1)


async def reverting(ui: httpx.AsyncClient, database_url: str) -> dict[str, float]:
    started = time.monotonic()
    response = await ui.post(
        "/customer/fleet/rollouts",
        json={
            "filter": {},
            "desired": {"crash": True, "fw": "3.0"},
            "stages": [10, 100],
            "success": {"synced_ratio": 0.95, "within_s": 600},
            "on_failure": "revert",
        },
    )
    response.raise_for_status()
    rollout_id = response.json()["rollout_id"]
    failed_at = reverted_at = 0.0
    conn = await db.connect(database_url, application_name="bench")
    try:
        while True:
            state = (await ui.get(f"/customer/fleet/rollouts/{rollout_id}")).json()["state"]
            now = time.monotonic() - started
            if state in {"reverting", "reverted"} and not failed_at:
                failed_at = now
            if state == "reverted":
                reverted_at = now
                break
            if state not in {"running", "reverting"}:
                raise RuntimeError(f"rollout ended {state}")
            await asyncio.sleep(0.05)

        async def held() -> bool:
            pending: int = await conn.fetchval(
                """SELECT count(*) FROM rollout_devices r
                   JOIN device_state s ON s.device_id = r.device_id
                   WHERE r.rollout_id = $1::uuid AND r.reverted
                     AND s.reported_version < r.revert_version""",
                rollout_id,
            )
            return pending == 0

        await wait_for(held, timeout=600, interval=0.05)
        reported_at = time.monotonic() - started
        written: int = await conn.fetchval(
            "SELECT count(*) FROM rollout_devices WHERE rollout_id = $1::uuid AND reverted",
            rollout_id,
        )
    finally:
        await conn.close()
    return {
        "failed": failed_at,
        "revert_written": reverted_at - failed_at,
        "revert_reported": reported_at - failed_at,
        "devices": written,
    }


async def main(devices: int, http: bool, connections: int) -> None:
    print(machine(), flush=True)
    async with scratch() as lab:
        await lab.tenant(TENANT)
        ui_service, ingest = lab.service("ui"), lab.service("ingest")
        ui_service.start()
        ingest.start()
        simulator = None
        fleet = None
        try:
            await ui_service.wait_ready()
            await ingest.wait_ready()
            t0 = time.monotonic()
            if http:
                ids = [f"ro-{n:06d}" for n in range(1, devices + 1)]
                tokens = await provision_fleet(lab.database_url, tenant_id=TENANT, device_ids=ids)
                print(f"{devices} devices provisioned in {time.monotonic() - t0:.1f} s")
                fleet = HttpFleet(ingest.url, tokens, connections)
                await fleet.start()
                t1 = time.monotonic()
                await wait_for(
                    lambda: asyncio.sleep(0, fleet.polls >= devices), timeout=3600, interval=1
                )
                print(
                    f"HTTP devices: first sweep of {devices} polls over {connections} "
                    f"connections in {time.monotonic() - t1:.1f} s",
                    flush=True,
                )
            else:
                simulator = await start_simulator(lab, devices)
                print(f"{devices} devices connected in {time.monotonic() - t0:.1f} s", flush=True)
            async with httpx.AsyncClient(
                base_url=ui_service.url, headers=operator_headers(TENANT), timeout=60
            ) as ui:
                written, synced = await bulk_job(ui, devices)
                print(
                    f"bulk job: written in {written:.1f} s, every device reported in "
                    f"{synced:.1f} s",
                    flush=True,
                )
                stages, total = await staged(ui)
                for index, stage in enumerate(stages):
                    print(
                        f"rollout stage {index + 1}: written after "
                        f"{stage['written'] - stage['start']:.1f} s, gate passed after "
                        f"{stage['passed'] - stage['start']:.1f} s",
                        flush=True,
                    )
                print(
                    f"rollout (1/10/50/100 %): done in {total:.1f} s = "
                    f"{total / synced:.2f}x the bulk job's {synced:.1f} s",
                    flush=True,
                )
                revert = await reverting(ui, lab.database_url)
                print(
                    f"revert: stage failed {revert['failed']:.1f} s after the start; "
                    f"{revert['devices']:.0f} devices' revert written "
                    f"{revert['revert_written']:.2f} s after the failure, every one reporting "
                    f"it {revert['revert_reported']:.2f} s after the failure",
                    flush=True,
                )
            if fleet is not None:
                print(
                    f"HTTP devices: {fleet.polls} polls, {fleet.reports} reports, "
                    f"{fleet.errors} errors in {time.monotonic() - t0:.0f} s",
                    flush=True,
                )
        finally:
            if fleet is not None:
                await fleet.stop()
            if simulator is not None and simulator.returncode is None:
                simulator.terminate()
                await simulator.wait()
            ui_service.stop()
            ingest.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument(
        "--http", action="store_true", help="devices over the HTTP device API, polled in turn"
    )
    parser.add_argument("--connections", type=int, default=32, help="with --http")
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.http, args.connections))
