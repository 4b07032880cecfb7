"""Provisioning: registering a fleet through the operator API, with real services.

Two phases, each into its own tenant of one scratch database (the second starts with the
first's devices in the table):

- single creates: ``POST /customer/devices`` from C concurrent clients until N devices exist;
  the create rate of the first W devices against that of the last W (devices numbered in
  the order their creates completed). Goal: the last at least 0.8x the first, so
  registering does not slow down as the fleet grows.
- batches: ``POST /customer/devices/batch`` with 1,000 devices per call, one call after
  another, until N devices exist. Goal: 100,000 devices in 60 s or less (scaled to N).

After each phase the tenant's ``GET /customer/fleet/summary`` total must be exactly N.

    .venv/bin/python bench/provision.py [--devices 100000] [--clients 8] [--window 1000]
        [--phase single|batch|both]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time

import httpx
from harness import BATCH_SIZE, machine, operator_headers, provision_batches, ratio, scratch

RATIO_GOAL = 0.8
BATCH_CEILING_S = 60.0  # for 100,000 devices
BATCH_CEILING_DEVICES = 100_000


async def single_creates(url: str, tenant_id: str, devices: int, clients: int) -> list[float]:
    """Completion times (monotonic) of ``devices`` single creates, in completion order."""
    headers = operator_headers(tenant_id)
    numbers = itertools.count()
    done: list[float] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
            while (n := next(numbers)) < devices:
                response = await http.post("/customer/devices", json={"device_id": f"s-{n:07d}"})
                if response.status_code != 201:
                    raise RuntimeError(f"create {n}: {response.status_code} {response.text}")
                done.append(time.monotonic())

    async with asyncio.TaskGroup() as tasks:
        for _ in range(clients):
            tasks.create_task(client())
    return done


async def batch_creates(url: str, tenant_id: str, devices: int) -> float:
    """Seconds to create ``devices`` in calls of ``BATCH_SIZE``, one after another."""
    started = time.monotonic()
    await provision_batches(url, tenant_id, range(devices), lambda n: {"device_id": f"b-{n:07d}"})
    return time.monotonic() - started


async def fleet_total(url: str, tenant_id: str) -> int:
    async with httpx.AsyncClient(base_url=url, headers=operator_headers(tenant_id)) as http:
        response = await http.get("/customer/fleet/summary")
        response.raise_for_status()
        total: int = response.json()["total"]
        return total


def window_rate(times: list[float], first: int, last: int, started: float) -> float:
    """Creates per second over completions ``first`` to ``last`` (0-based, inclusive)."""
    begin = started if first == 0 else times[first - 1]
    return (last - first + 1) / (times[last] - begin)


async def main(devices: int, clients: int, window: int, phase: str) -> None:
    print(f"Provisioning benchmark on {machine()}")
    window = min(window, devices)
    async with scratch() as lab:
        await lab.tenant("single")
        await lab.tenant("batch")
        ui = lab.service("ui")
        ui.start()
        try:
            await ui.wait_ready()
            if phase in ("single", "both"):
                started = time.monotonic()
                times = await single_creates(ui.url, "single", devices, clients)
                elapsed = times[-1] - started
                first = window_rate(times, 0, window - 1, started)
                last = window_rate(times, devices - window, devices - 1, started)
                total = await fleet_total(ui.url, "single")
                print(
                    f"single creates: POST /customer/devices, {clients} clients, {devices:,} "
                    f"devices in {elapsed:.1f} s ({devices / elapsed:,.0f}/s); summary total "
                    f"{total:,}\n"
                    f"  devices 1-{window:,}: {first:,.0f}/s   devices "
                    f"{devices - window + 1:,}-{devices:,}: {last:,.0f}/s   ratio "
                    f"{ratio(last, first)} (goal >= {RATIO_GOAL}x)"
                )
                tenth = devices // 10
                if tenth >= window:
                    rates = [
                        window_rate(times, start, start + tenth - 1, started)
                        for start in range(0, devices - tenth + 1, tenth)
                    ]
                    print("  by tenths: " + " ".join(f"{rate:,.0f}" for rate in rates) + " /s")
                if total != devices:
                    raise SystemExit(f"fleet summary says {total}, not {devices}")
            if phase in ("batch", "both"):
                seconds = await batch_creates(ui.url, "batch", devices)
                total = await fleet_total(ui.url, "batch")
                ceiling = BATCH_CEILING_S * devices / BATCH_CEILING_DEVICES
                print(
                    f"batches: POST /customer/devices/batch, {BATCH_SIZE:,} per call, one at a "
                    f"time: {devices:,} devices in {seconds:.1f} s ({devices / seconds:,.0f}/s); "
                    f"summary total {total:,}\n"
                    f"  ceiling {ceiling:.1f} s ({BATCH_CEILING_S:.0f} s per "
                    f"{BATCH_CEILING_DEVICES:,}): {ratio(seconds, ceiling)} of it (goal <= 1x)"
                )
                if total != devices:
                    raise SystemExit(f"fleet summary says {total}, not {devices}")
        finally:
            ui.stop()
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000, help="per phase")
    parser.add_argument("--clients", type=int, default=8, help="concurrent single creates")
    parser.add_argument("--window", type=int, default=1000, help="devices per rate window")
    parser.add_argument("--phase", choices=["single", "batch", "both"], default="both")
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.clients, args.window, args.phase))
