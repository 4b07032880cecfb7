"""HTTP: requests/s of the device and operator APIs against a bare endpoint, same settings.

``wrk`` (Debian's ``wrk`` package) drives each at a fixed concurrency, in turn:

- ``POST /device/v1/shadow/reported`` on ``ingest_iot`` (token lookup, one report applied in
  its own transaction), spread over D devices, against a bare FastAPI ``POST`` that reads
  the body and returns a constant JSON document;
- ``GET /customer/devices/{id}/twin`` on ``ui_iot`` (bearer token, twin read), against the
  bare ``GET``.

The bare app (``bench/bare_app.py``) runs with the services' server settings: uvicorn, one
worker, uvloop, httptools, orjson. Every response must be a 2xx.

    .venv/bin/python bench/http_api.py [--connections 32] [--seconds 8] [--devices 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator

import httpx
from harness import ROOT, machine, operator_headers, profile, ratio, scratch
from tests.support import free_port

from iotcloud.provisioning import provision_fleet

TENANT = "bench"
REPORT = '{"reported":{"temperature_c":21.5},"version":0}'


def lua_list(values: list[str]) -> str:
    return "{" + ", ".join(f'"{value}"' for value in values) + "}"


def post_script(path: str, tokens: list[str]) -> str:
    return f"""
local tokens = {lua_list(tokens)}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "{path}", {{["X-Provision-Token"] = tokens[(i % #tokens) + 1],
    ["Content-Type"] = "application/json"}}, '{REPORT}')
end
"""


def get_script(paths: list[str], authorization: str) -> str:
    return f"""
local paths = {lua_list(paths)}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1], {{["Authorization"] = "{authorization}"}})
end
"""


def wrk(url: str, script: str, *, connections: int, seconds: int) -> float:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        result = subprocess.run(
            [
                binary,
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",  # a slow answer is a figure, not a failure; errors still fail
                "-s",
                lua.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    if "Non-2xx" in result.stdout or "Socket errors" in result.stdout:
        raise RuntimeError(f"failed requests:\n{result.stdout}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    if match is None:
        raise RuntimeError(f"wrk output not understood:\n{result.stdout}{result.stderr}")
    return float(match.group(1))


@contextlib.contextmanager
def bare_app() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bare_app.py"), str(port)],
        env={"PYTHONPATH": str(ROOT / "services"), "PATH": "/usr/bin:/bin"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/bare").status_code == 200:
                    break
            subprocess.run(["sleep", "0.1"], check=True)
        yield url
    finally:
        process.terminate()
        process.wait(10)


async def main(connections: int, seconds: int, devices: int, profiled: str | None) -> None:
    print(f"HTTP benchmark on {machine()}")
    async with scratch() as lab:
        await lab.tenant(TENANT)
        tokens = await provision_fleet(
            lab.database_url,
            tenant_id=TENANT,
            device_ids=[f"http-{n:04d}" for n in range(devices)],
        )
        ui, ingest = lab.service("ui"), lab.service("ingest")
        ui.start()
        ingest.start()
        try:
            await ui.wait_ready()
            await ingest.wait_ready()
            figures = await asyncio.to_thread(
                measure, ui.url, ingest.url, tokens, connections, seconds, profiled, ui, ingest
            )
        finally:
            ui.stop()
            ingest.stop()
    post, post_bare, get, get_bare = figures
    print(
        f"HTTP: wrk, 1 thread, {connections} connections, {seconds} s each, one worker each\n"
        f"  POST /device/v1/shadow/reported  {post:8,.0f} req/s   bare POST {post_bare:8,.0f} "
        f"req/s   ratio {ratio(post, post_bare)} (goal >= 0.6x)\n"
        f"  GET  /customer/devices/{{id}}/twin {get:8,.0f} req/s   bare GET  {get_bare:8,.0f} "
        f"req/s   ratio {ratio(get, get_bare)} (goal >= 0.6x)"
    )


def measure(
    ui_url: str,
    ingest_url: str,
    tokens: dict[str, str],
    connections: int,
    seconds: int,
    profiled: str | None,
    *services: object,
) -> tuple[float, float, float, float]:
    authorization = operator_headers(TENANT)["Authorization"]
    twin_paths = [f"/customer/devices/{device_id}/twin" for device_id in tokens]
    run = {"connections": connections, "seconds": seconds}
    with bare_app() as bare:
        post_bare = wrk(bare, post_script("/bare", list(tokens.values())), **run)
        get_bare = wrk(bare, get_script(["/bare"], authorization), **run)
    with profiling(profiled, services, seconds):
        post = wrk(
            ingest_url, post_script("/device/v1/shadow/reported", list(tokens.values())), **run
        )
        get = wrk(ui_url, get_script(twin_paths, authorization), **run)
    return post, post_bare, get, get_bare


@contextlib.contextmanager
def profiling(which: str | None, services: tuple[object, ...], seconds: int) -> Iterator[None]:
    if which is None:
        yield
        return
    ui, ingest = services
    target = ingest if which == "ingest" else ui
    pid = target.process.pid  # type: ignore[attr-defined]
    frames: list[str] = []
    worker = threading.Thread(target=lambda: frames.extend(profile(pid, seconds - 1)))
    if which == "ui":
        # The GET runs second: start sampling once the POST run is over.
        threading.Timer(seconds + 0.5, worker.start).start()
    else:
        worker.start()
    yield
    worker.join()
    print(f"  {which} profile (py-spy):")
    for frame in frames:
        print(f"    {frame}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--profile", choices=["ui", "ingest"], help="py-spy this service")
    args = parser.parse_args()
    asyncio.run(main(args.connections, args.seconds, args.devices, args.profile))
