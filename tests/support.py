"""Real PostgreSQL and real Mosquitto for the test suites: no mocks.

PostgreSQL: ``TEST_DATABASE_URL`` (a server where we may create databases) or else an
embedded server under ``.iotcloud/test``. Each test gets its own database cloned from a
template built by running the real migrations. Mosquitto: a private broker with the
project's own configuration, on a free port, per test that needs one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from iotcloud.embedded import EmbeddedBroker, EmbeddedPostgres
from shared import db
from shared.tls import TlsFiles

ROOT = Path(__file__).resolve().parents[1]
# One template per test session, so concurrent sessions never drop each other's.
TEMPLATE_DB = f"iotcloud_tpl_{os.getpid()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_url() -> str:
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        return configured
    home = ROOT / ".iotcloud" / "test"
    port_file = home / "port"
    if "TEST_PG_PORT" in os.environ:
        port = int(os.environ["TEST_PG_PORT"])
    elif port_file.exists():
        port = int(port_file.read_text())
    else:
        # A free port, kept for this checkout: two checkouts on one machine never collide.
        port = free_port()
        home.mkdir(parents=True, exist_ok=True)
        port_file.write_text(str(port))
    return EmbeddedPostgres(home, port).ensure_running()


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def drop_template(server: str) -> None:
    admin = await asyncpg.connect(with_database(server, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
    finally:
        await admin.close()


async def build_template(server: str) -> None:
    admin = await asyncpg.connect(with_database(server, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    conn = await db.connect(with_database(server, TEMPLATE_DB), application_name="tests")
    try:
        await db.migrate(conn)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database(server: str) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(with_database(server, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    try:
        yield with_database(server, name)
    finally:
        admin = await asyncpg.connect(with_database(server, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@dataclass
class Broker:
    """A private Mosquitto with the project's auth plugin on a free port (its TLS listener
    on another), its devices read from ``database_url``."""

    home: Path
    port: int
    database_url: str
    tls_port: int = 0
    durability: str = "fast"
    process: subprocess.Popen[bytes] | None = None
    cert_port: int = 0
    device_trust: Path | None = None

    @property
    def embedded(self) -> EmbeddedBroker:
        return EmbeddedBroker(
            self.home,
            self.port,
            tls_port=self.tls_port,
            durability=self.durability,
            cert_port=self.cert_port,
            device_trust=self.device_trust,
        )

    @property
    def url(self) -> str:
        return self.embedded.url

    def start(self, *, tls: TlsFiles | None = None) -> None:
        argv = self.embedded.prepare(self.database_url, tls=tls)
        log = (self.home / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: see {self.home / 'mosquitto.log'}")
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


async def eventually(check, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll an async check until it returns a truthy value; fail with the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


@dataclass
class ServiceProcess:
    """``iotcloud serve ui|ingest`` as a real child process, to kill -9 and restart."""

    service: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def make(
        cls, service: str, *, home: Path, database_url: str, mqtt_url: str, replica: str = "r1"
    ) -> ServiceProcess:
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "MQTT_URL": mqtt_url,
            "IOTCLOUD_HOME": str(home),
            "IOTCLOUD_JWT_SECRET": SERVICE_JWT_SECRET,
            "IOTCLOUD_REPLICA": replica,
            "IOTCLOUD_POOL_MAX": "5",
            "PYTHONPATH": str(ROOT / "services"),
            "UI_PORT" if service == "ui" else "INGEST_PORT": str(port),
        }
        home.mkdir(parents=True, exist_ok=True)
        return cls(service, port, env, home / f"{service}-{replica}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "iotcloud.cli", "serve", self.service],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Until ``/readyz`` answers 200 (database and broker both reachable)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:

            async def ready() -> bool:
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"{self.service} exited; see {self.log_path}")
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, timeout=timeout, interval=0.1)


SERVICE_JWT_SECRET = "test-secret-for-service-processes-0123456789"


def operator_user_id(tenant_id: str, role: str) -> int:
    """The id of :func:`add_operator`'s user: far above the ids PostgreSQL hands out."""
    digest = hashlib.sha256(f"{tenant_id}/{role}".encode()).digest()
    return 2**40 + int.from_bytes(digest[:4], "big")


async def add_operator(conn: Any, tenant_id: str, *, role: str = "admin") -> None:
    """The user :func:`operator_headers` speaks for (a token must name a user that exists)."""
    await conn.execute(
        """INSERT INTO users (user_id, tenant_id, email, password_hash, role)
           OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, 'no password', $4)
           ON CONFLICT DO NOTHING""",
        operator_user_id(tenant_id, role),
        tenant_id,
        f"{role}@{tenant_id}.test",
        role,
    )


def operator_headers(tenant_id: str, *, role: str = "admin") -> dict[str, str]:
    """Bearer headers for service processes started by :class:`ServiceProcess`, for the user
    :func:`add_operator` adds."""
    from shared.security import Principal, issue_token

    who = Principal(operator_user_id(tenant_id, role), f"{role}@{tenant_id}.test", tenant_id, role)  # type: ignore[arg-type]
    token = issue_token(who, secret=SERVICE_JWT_SECRET, ttl_s=3600)
    return {"Authorization": f"Bearer {token}"}
