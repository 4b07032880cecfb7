from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from shared import db
from shared.repositories import tenants, users
from shared.security import hash_password
from shared.settings import Settings
from shared.twin import Limits
from tests.support import (
    Broker,
    build_template,
    drop_template,
    free_port,
    fresh_database,
    server_url,
)

# The machine is shared (2 cores, other suites and benchmarks running): how fast Hypothesis
# draws examples and how long one takes are not what the property tests check.
hypothesis_settings.register_profile(
    "shared-machine", suppress_health_check=[HealthCheck.too_slow], deadline=None
)
hypothesis_settings.load_profile("shared-machine")


@pytest.fixture(scope="session")
async def pg_server() -> AsyncIterator[str]:
    url = server_url()
    await build_template(url)
    yield url
    await drop_template(url)


@pytest.fixture
async def database_url(pg_server: str) -> AsyncIterator[str]:
    async with fresh_database(pg_server) as url:
        yield url


@pytest.fixture
def broker(tmp_path: Path, database_url: str) -> Iterator[Broker]:
    running = Broker(tmp_path / "broker", free_port(), database_url)
    running.start()
    try:
        yield running
    finally:
        running.kill()


def make_settings(database_url: str, mqtt_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "mqtt_url": mqtt_url,
        "jwt_secret": secrets.token_urlsafe(48),
        "jwt_ttl_s": 3600,
        "dev_mode": False,
        "ui_port": 0,
        "ingest_port": 0,
        "stale_after": timedelta(hours=1),
        "limits": Limits(),
        "pool_max_size": 20,
        "history_retention_days": 30,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Stack:
    """Both services in this process over real PostgreSQL and Mosquitto, with HTTP clients."""

    settings: Settings
    broker: Broker
    ui: httpx.AsyncClient
    ingest: httpx.AsyncClient
    ui_app: Any
    ingest_app: Any
    _tokens: dict[str, str] = field(default_factory=dict)

    async def tenant(
        self, role: str = "admin", tenant_id: str | None = None
    ) -> tuple[str, dict[str, str]]:
        """A new tenant (or an existing one) and bearer headers for a user of ``role`` in it."""
        tenant_id = tenant_id or f"t-{uuid.uuid4().hex[:10]}"
        email = f"{role}-{uuid.uuid4().hex[:8]}@{tenant_id}.test"
        conn = await db.connect(self.settings.database_url, application_name="tests")
        try:
            await tenants.insert(conn, tenant_id, tenant_id)
            await users.insert(
                conn,
                tenant_id=tenant_id,
                email=email,
                password_hash=hash_password("pw-123456"),
                role=role,
            )
        finally:
            await conn.close()
        response = await self.ui.post(
            "/auth/token", data={"username": email, "password": "pw-123456"}
        )
        assert response.status_code == 200, response.text
        return tenant_id, {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def device(self, headers: dict[str, str], **body: Any) -> dict[str, Any]:
        response = await self.ui.post("/customer/devices", json=body, headers=headers)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


@contextlib.asynccontextmanager
async def running_stack(settings: Settings, broker: Broker) -> AsyncIterator[Stack]:
    from ingest_iot.app import create_app as create_ingest
    from ui_iot.app import create_app as create_ui

    ui_app, ingest_app = create_ui(settings), create_ingest(settings)
    watchdog: asyncio.TimerHandle | None = None
    try:
        async with (
            ui_app.router.lifespan_context(ui_app),
            ingest_app.router.lifespan_context(ingest_app),
            httpx.AsyncClient(transport=httpx.ASGITransport(ui_app), base_url="http://ui") as ui,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(ingest_app), base_url="http://ingest"
            ) as ingest,
        ):
            await ingest_app.state.link.wait_connected(10)
            try:
                yield Stack(settings, broker, ui, ingest, ui_app, ingest_app)
            finally:
                # Both services stop within seconds; if not, say what is still waiting.
                watchdog = asyncio.get_running_loop().call_later(
                    30, dump_tasks, "the stack has not stopped within 30 s"
                )
    finally:
        if watchdog is not None:
            watchdog.cancel()


def dump_tasks(why: str) -> None:
    """Every asyncio task's stack, on stderr (pytest shows it with the failure)."""
    out = io.StringIO()
    print(f"--- {why}: asyncio tasks ---", file=out)
    for task in asyncio.all_tasks():
        print(f"{task!r}", file=out)
        task.print_stack(limit=12, file=out)
    sys.stderr.write(out.getvalue())
    sys.stderr.flush()


@pytest.fixture
async def stack(database_url: str, broker: Broker) -> AsyncIterator[Stack]:
    async with running_stack(make_settings(database_url, broker.url), broker) as running:
        yield running
