"""``iotcloud up``: the embedded parts and both services as supervised child processes."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from typing import BinaryIO

from iotcloud import cli, cli_certs, cli_runtime, embedded
from shared import db
from shared.aio import within
from shared.repositories import tenants, users
from shared.security import hash_password
from shared.settings import project_home
from shared.tls import ensure_server_certificate

DEMO_TENANT = "demo"
DEMO_EMAIL = "admin@demo.local"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - printed on screen by design, dev only
DEMO_DEVICES = 3


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor dies, even by kill -9 (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None


async def _tee(stream: asyncio.StreamReader, name: str, log: BinaryIO) -> None:
    """``up --verbose``: a child's output to its log file and to the screen."""
    while line := await stream.readline():
        log.write(line)
        log.flush()
        sys.stdout.write(f"{name}: {line.decode(errors='replace')}")
        sys.stdout.flush()


async def _supervise(
    child: Child, env: dict[str, str], stopping: asyncio.Event, *, verbose: bool = False
) -> None:
    """Run the child until stopping, restarting it when it dies. Its output goes to
    ``.iotcloud/logs/<name>.log`` (and with ``verbose`` to the screen as well)."""
    delay = 0.5
    logs = cli_runtime.logs_dir()
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{child.name}.log").open("ab") as log:
        while not stopping.is_set():
            child.process = await asyncio.create_subprocess_exec(
                *child.argv,
                env=env,
                preexec_fn=_die_with_parent,
                stdout=asyncio.subprocess.PIPE if verbose else log,
                stderr=asyncio.subprocess.STDOUT,
            )
            started = asyncio.get_running_loop().time()
            if verbose and child.process.stdout is not None:
                await _tee(child.process.stdout, child.name, log)
            code = await child.process.wait()
            if stopping.is_set():
                return
            if asyncio.get_running_loop().time() - started > 30:
                delay = 0.5
            print(
                f"iotcloud: {child.name} exited with code {code}; restarting in {delay:.1f}s "
                f"(log: {logs / (child.name + '.log')})",
                flush=True,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _stop(children: list[Child]) -> None:
    for child in children:
        if child.process and child.process.returncode is None:
            child.process.terminate()
    for child in children:
        if child.process and child.process.returncode is None:
            try:
                await within(child.process.wait(), 10)
            except TimeoutError:
                child.process.kill()


async def _ensure_demo(database_url: str) -> None:
    conn = await db.connect(database_url, application_name="iotcloud-up")
    try:
        await tenants.insert(conn, DEMO_TENANT, "Demo tenant")
        if await users.by_email(conn, DEMO_EMAIL) is None:
            await users.insert(
                conn,
                tenant_id=DEMO_TENANT,
                email=DEMO_EMAIL,
                password_hash=hash_password(DEMO_PASSWORD),
                role="admin",
            )
    finally:
        await conn.close()


async def up(*, demo: bool, verbose: bool = False) -> None:
    env = cli.service_env()
    database_url = env["DATABASE_URL"]
    conn = await db.connect(database_url, application_name="iotcloud-up")
    try:
        await db.migrate(conn)
        await cli_certs.sync_trust_store(conn)
    finally:
        await conn.close()

    me = [sys.executable, "-m", "iotcloud.cli"]
    children: list[Child] = []
    broker_lines: list[str] = [f"  MQTT broker               {cli.mqtt_display()}"]
    if not os.environ.get("MQTT_URL"):
        broker = cli.embedded_broker()
        tls = ensure_server_certificate(project_home())
        force_fallback = os.environ.get("IOTCLOUD_FALLBACK_BROKER", "") in {"1", "true", "yes"}
        mosquitto_ready = embedded.find_mosquitto() and embedded.find_auth_plugin()
        if not force_fallback and mosquitto_ready:
            # Devices authenticate against the database at CONNECT: nothing to write per device.
            argv = broker.prepare(database_url, tls=tls)
            children.append(Child("broker", argv))
        else:
            # No Mosquitto or no plugin here: the in-process broker keeps the same rules.
            broker.service_password()
            children.append(Child("broker", [sys.executable, "-m", "iotcloud.fallback_broker"]))
            env["IOTCLOUD_AWS_TOPICS"] = "0"  # it refuses "$aws/..." topics (SPEC §9)
        broker_lines.append(
            f"  MQTT over TLS             mqtts://{broker.bind}:{broker.tls_port}"
            f"  (devices trust {tls.ca or tls.cert})"
        )
        if broker.cert_port and mosquitto_ready and not force_fallback:
            broker_lines.append(
                f"  MQTT, client certificates mqtts://{broker.bind}:{broker.cert_port}"
                "  (iotcloud device cert)"
            )
    children += [
        Child("ui_iot", [*me, "serve", "ui"]),
        Child("ingest_iot", [*me, "serve", "ingest"]),
    ]
    if demo:
        await _ensure_demo(database_url)
        children.append(
            Child(
                "simulator",
                [
                    *me,
                    "simulate",
                    "--tenant",
                    DEMO_TENANT,
                    "--devices",
                    str(DEMO_DEVICES),
                    "--prefix",
                    "demo-sensor",
                    "--rate",
                    "0.1",
                    "--apply-delay",
                    "3",
                    "--progress-every",
                    "300",
                ],
            )
        )

    ui_port, ingest_port = env.get("UI_PORT", "8000"), env.get("INGEST_PORT", "8001")
    banner = "\n".join(
        [
            "iotcloud is running:",
            f"  console and operator API  http://127.0.0.1:{ui_port}/",
            f"  device API                http://127.0.0.1:{ingest_port}/device/v1",
            f"  DATABASE_URL              {database_url}",
            *broker_lines,
            *([f"  demo login                {DEMO_EMAIL} / {DEMO_PASSWORD}"] if demo else []),
            f"  logs                      {cli_runtime.logs_dir()}/"
            + ("" if verbose else "  (iotcloud up --verbose shows them here)"),
            "Press Ctrl-C or run `iotcloud down` to stop; `iotcloud status` says what runs.",
        ]
    )
    cli_runtime.write_pid()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        async with asyncio.TaskGroup() as tasks:
            for child in children:
                tasks.create_task(
                    _supervise(child, env, stopping, verbose=verbose),
                    name=f"supervise-{child.name}",
                )
                if child.name == "broker":
                    await asyncio.sleep(0.5)  # let the broker listen before the services dial it
            if not verbose:
                # The services log to files: the banner is the last thing on screen.
                await asyncio.sleep(1.0)
            print(banner, flush=True)
            await stopping.wait()
            await _stop(children)
    finally:
        await _stop(children)
        cli_runtime.clear_pid()
