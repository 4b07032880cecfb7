"""``iotcloud up``: the embedded parts and both services as supervised child processes."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from iotcloud import cli, embedded
from shared import db
from shared.aio import within
from shared.dynsec import BrokerCredential, DeviceAccount
from shared.repositories import devices as devices_repo
from shared.repositories import tenants, users
from shared.security import hash_password

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
    before_start: Callable[[], None] | None = None
    process: asyncio.subprocess.Process | None = None


async def _supervise(child: Child, env: dict[str, str], stopping: asyncio.Event) -> None:
    delay = 0.5
    while not stopping.is_set():
        if child.before_start is not None:
            await asyncio.to_thread(child.before_start)
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


async def broker_accounts_from_db(database_url: str) -> list[DeviceAccount]:
    conn = await db.connect(database_url, application_name="iotcloud-up")
    try:
        rows = await devices_repo.broker_accounts(conn)
    finally:
        await conn.close()
    return [
        DeviceAccount(
            row["device_id"],
            row["tenant_id"],
            BrokerCredential(row["broker_salt"], row["broker_hash"]),
        )
        for row in rows
    ]


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
    finally:
        await conn.close()

    me = [sys.executable, "-m", "iotcloud.cli"]
    children: list[Child] = []
    if not os.environ.get("MQTT_URL"):
        broker = cli.embedded_broker()
        loop = asyncio.get_running_loop()

        def rebuild_accounts() -> None:
            # The database is the truth: every broker start gets its accounts from it.
            accounts = asyncio.run_coroutine_threadsafe(
                broker_accounts_from_db(database_url), loop
            ).result()
            broker.prepare(accounts)

        force_fallback = os.environ.get("IOTCLOUD_FALLBACK_BROKER", "") in {"1", "true", "yes"}
        if not force_fallback and embedded.find_mosquitto() is not None:
            argv = broker.prepare(await broker_accounts_from_db(database_url))
            children.append(Child("broker", argv, before_start=rebuild_accounts))
        else:
            # No Mosquitto here: the in-process broker reads its accounts from the database.
            broker.service_password()
            children.append(Child("broker", [sys.executable, "-m", "iotcloud.fallback_broker"]))
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
                f"  MQTT broker               {cli.mqtt_display()}",
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
