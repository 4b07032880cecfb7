"""``iotcloud up``: the embedded parts and both services as supervised child processes."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass

from iotcloud import cli, cli_certs, embedded
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


async def _supervise(child: Child, env: dict[str, str], stopping: asyncio.Event) -> None:
    delay = 0.5
    while not stopping.is_set():
        child.process = await asyncio.create_subprocess_exec(
            *child.argv, env=env, preexec_fn=_die_with_parent
        )
        started = asyncio.get_running_loop().time()
        code = await child.process.wait()
        if stopping.is_set():
            return
        if asyncio.get_running_loop().time() - started > 30:
            delay = 0.5
        print(
            f"iotcloud: {child.name} exited with code {code}; restarting in {delay:.1f}s",
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


async def up(*, demo: bool) -> None:
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
    print(
        "\n".join(
            [
                "iotcloud is starting:",
                f"  console and operator API  http://127.0.0.1:{ui_port}/",
                f"  device API                http://127.0.0.1:{ingest_port}/device/v1",
                f"  DATABASE_URL              {database_url}",
                *broker_lines,
                *([f"  demo login                {DEMO_EMAIL} / {DEMO_PASSWORD}"] if demo else []),
                "Press Ctrl-C to stop.",
            ]
        ),
        flush=True,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        async with asyncio.TaskGroup() as tasks:
            for child in children:
                tasks.create_task(_supervise(child, env, stopping), name=f"supervise-{child.name}")
                if child.name == "broker":
                    await asyncio.sleep(0.5)  # let the broker listen before the services dial it
            await stopping.wait()
            await _stop(children)
    finally:
        await _stop(children)
