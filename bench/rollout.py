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
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from bench.harness import Scratch, machine, operator_headers, scratch  # noqa: E402

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
            if done or index < document["stage"]:
                marks[index].setdefault("passed", now)
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


async def main(devices: int) -> None:
    print(machine(), flush=True)
    async with scratch() as lab:
        await lab.tenant(TENANT)
        ui_service, ingest = lab.service("ui"), lab.service("ingest")
        ui_service.start()
        ingest.start()
        simulator = None
        try:
            await ui_service.wait_ready()
            await ingest.wait_ready()
            t0 = time.monotonic()
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
        finally:
            if simulator is not None and simulator.returncode is None:
                simulator.terminate()
                await simulator.wait()
            ui_service.stop()
            ingest.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().devices))
