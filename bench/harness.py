"""What every benchmark shares: a scratch database and broker, service processes, the
simulator, percentiles, the machine's description and a py-spy profile of a process.

Benchmarks never touch the developer's ``.iotcloud`` data: the database is a fresh one on
the test server (``TEST_DATABASE_URL`` or the embedded test PostgreSQL), cloned from a
template built by the real migrations, and the broker a private Mosquitto on a free port;
both are removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "services")]

from tests.support import (  # noqa: E402
    SERVICE_JWT_SECRET,
    Broker,
    ServiceProcess,
    add_operator,
    build_template,
    drop_template,
    free_port,
    fresh_database,
    operator_headers,
    server_url,
)

from shared import db  # noqa: E402

__all__ = [
    "BATCH_SIZE",
    "ROOT",
    "SERVICE_JWT_SECRET",
    "Scratch",
    "cpu_seconds",
    "machine",
    "operator_headers",
    "percentile",
    "postmaster_pid",
    "profile",
    "provision_batches",
    "ratio",
    "rss_mib",
    "scratch",
    "tree_cpu_seconds",
]


@dataclass
class Scratch:
    database_url: str
    broker: Broker
    home: Path

    def service(self, name: str, *, replica: str = "bench", **env: str) -> ServiceProcess:
        process = ServiceProcess.make(
            name,
            home=self.home,
            database_url=self.database_url,
            mqtt_url=self.broker.url,
            replica=replica,
        )
        process.env.update({"IOTCLOUD_POOL_MAX": "10", "IOTCLOUD_LOG_LEVEL": "warning", **env})
        return process

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "MQTT_URL": self.broker.url,
            "PYTHONPATH": str(ROOT / "services"),
        }

    async def tenant(self, tenant_id: str) -> None:
        conn = await db.connect(self.database_url, application_name="bench")
        try:
            await conn.execute(
                "INSERT INTO tenants (tenant_id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING",
                tenant_id,
            )
            await add_operator(conn, tenant_id)
        finally:
            await conn.close()

    async def simulate(self, *args: str, on_connected: Callable[[int], None] | None = None) -> str:
        """Run ``iotcloud simulate`` to its end; returns its output. ``on_connected`` is
        called with the simulator's pid once all its devices are connected."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "iotcloud.cli",
            "simulate",
            *args,
            env=self.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        lines = []
        async for raw in process.stdout:
            line = raw.decode()
            lines.append(line)
            if on_connected is not None and line.startswith("all ") and " connected " in line:
                on_connected(process.pid)
        await process.wait()
        text = "".join(lines)
        if process.returncode != 0:
            raise RuntimeError(f"iotcloud simulate failed:\n{text}")
        return text


@contextlib.asynccontextmanager
async def scratch(*, with_broker: bool = True, durability: str = "fast") -> AsyncIterator[Scratch]:
    server = server_url()
    await build_template(server)
    home = Path(tempfile.mkdtemp(prefix="iotcloud-bench-"))
    failed = False
    broker: Broker | None = None
    try:
        async with fresh_database(server) as url:
            broker = Broker(home / "broker", free_port(), url, durability=durability)
            if with_broker:
                broker.start()
            yield Scratch(url, broker, home)
    except BaseException:
        failed = True
        raise
    finally:
        if broker is not None:
            broker.kill()
        await drop_template(server)
        if failed:
            print(f"(logs kept in {home})", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


BATCH_SIZE = 1000  # devices per ``POST /customer/devices/batch``, the API's maximum


async def provision_batches(
    url: str,
    tenant_id: str,
    numbers: range,
    entry: Callable[[int], dict[str, Any]],
    *,
    clients: int = 1,
    keep: Callable[[str], bool] = lambda _device_id: False,
) -> dict[str, str]:
    """Register one device per number through ``POST /customer/devices/batch`` of the
    ``ui_iot`` at ``url``, ``BATCH_SIZE`` entries (``entry(n)``, the API's JSON) per call,
    from ``clients`` concurrent clients each sending its next call when the last returns.
    Returns {device_id: provision token} of the devices ``keep`` selects: the API hands
    each token out once, and a whole fleet's would only fill this process."""
    headers = operator_headers(tenant_id)
    # One iterator shared by the clients: each call takes the next slice.
    batches = (numbers[i : i + BATCH_SIZE] for i in range(0, len(numbers), BATCH_SIZE))
    kept: dict[str, str] = {}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
            for batch in batches:
                body = {"devices": [entry(n) for n in batch]}
                response = await http.post("/customer/devices/batch", json=body)
                if response.status_code != 201:
                    raise RuntimeError(
                        f"batch at {batch.start}: {response.status_code} {response.text}"
                    )
                for item in response.json()["items"]:
                    if keep(item["device_id"]):
                        kept[item["device_id"]] = item["provision_token"]

    async with asyncio.TaskGroup() as tasks:
        for _ in range(clients):
            tasks.create_task(client())
    return kept


def rss_mib(pid: int) -> float:
    """Resident memory of a live process (``VmRSS`` in ``/proc/PID/status``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU time of a live process so far (``/proc/PID/stat``), with that of its
    children it has already waited for when ``reaped_children``."""
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU time of ``root`` and of its children, live or gone (a PostgreSQL server and its
    backends: the postmaster waits for every backend that exits)."""
    total = cpu_seconds(root, reaped_children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == root:
                total += cpu_seconds(int(stat.parent.name))
    return total


async def postmaster_pid(conn: db.Connection) -> int:
    """The PostgreSQL server's main process: the parent of every backend."""
    backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
    stat = Path(f"/proc/{backend}/stat").read_text()  # noqa: ASYNC240 - a tiny file
    return int(stat.rsplit(")", 1)[1].split()[1])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def ratio(value: float, ceiling: float) -> str:
    return f"{value / ceiling:.2f}x" if ceiling else "n/a"


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024 / 1024:.1f} GiB"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), {memory} RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; load average {load}"
    )


def profile(pid: int, seconds: float, *, top: int = 8, native: bool = False) -> list[str]:
    """Where ``pid`` spent its samples (py-spy, if installed): the ``top`` frames by self
    time, then the project's own functions by inclusive time, each as "share  function
    (file:line)"; empty when py-spy is not available. ``native`` adds C and system frames."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return []
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        result = subprocess.run(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                "250",
                "--format",
                "raw",
                # Native frames (C extensions, system calls) need the process paused per sample.
                *(["--native"] if native else ["--nonblocking"]),
                "--output",
                out.name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return [f"(py-spy failed: {result.stderr.strip()[:200]})"]
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for line in Path(out.name).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            own[_short(frames[-1])] += int(count)
            for frame in {_function(f) for f in frames if "/services/" in f}:
                inclusive[frame] += int(count)
            total += int(count)
    if not total:
        return ["(no samples)"]
    lines = [f"{100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("inclusive, this project's functions:")
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return lines


def _function(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split('services/', 1)[-1].split(':')[0]})"


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` with the path cut to the package."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "services/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})"
