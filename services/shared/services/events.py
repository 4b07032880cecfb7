"""The tenant's live stream of twin changes, as Server-Sent Events, from the database.

Every writer's change lands in ``twin_events`` by trigger (migration 007). The hub of each
ui_iot process gives committed events their stream ids (``seq``, serialised across replicas
by the counter row lock, so a larger id is never visible before a smaller one) and wakes its
streams; each stream reads its own tenant's events after its last id. Every replica therefore
streams the same events with the same ids, and ``Last-Event-ID`` resumes without a gap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import orjson

from shared import db, twin
from shared.aio import raise_if_cancelled, wait_event
from shared.errors import Unprocessable
from shared.ids import parse_bigint_id
from shared.mqtt import backoff_delays
from shared.repositories import events as events_repo

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
RETENTION = timedelta(days=1)
_SEQUENCE_BATCH = 5000
_PAGE = 500
_SAFETY_INTERVAL_S = 2.0
_RETENTION_INTERVAL_S = 60.0
_RETENTION_BATCH = 5000
_RETRY_MS = 2000


class EventHub:
    """One per process: a LISTEN connection, the sequencer, retention, and stream wake-ups."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        database_url: str,
        *,
        retention: timedelta = RETENTION,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self._pool = pool
        self._database_url = database_url
        self._retention = retention
        self.heartbeat_s = heartbeat_s
        self._new_events = asyncio.Event()
        self._generation = 0
        self._changed = asyncio.Event()
        self.closed = asyncio.Event()

    @property
    def generation(self) -> int:
        """Moves whenever events may have been sequenced; read it before querying."""
        return self._generation

    async def wait_beyond(self, generation: int, timeout: float) -> bool:
        """Wait until the generation moves past ``generation``; False on timeout or close."""
        waiting = self._generation == generation and not self.closed.is_set()
        if waiting and not await wait_event(self._changed, timeout):
            return False
        return not self.closed.is_set()

    def _bump(self) -> None:
        self._generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        """Ends every stream of this process (at shutdown)."""
        self.closed.set()
        self._bump()

    async def run(self) -> None:
        next_delay = backoff_delays()
        while True:
            try:
                await self._listen_and_sequence()
            except db.RETRYABLE_ERRORS as exc:
                log.warning("event hub lost the database: %r", exc)
            except Exception:
                raise_if_cancelled()
                # A bug must not take the whole app down with this task group: log, retry.
                log.exception("event hub failed unexpectedly, restarting it")
            await asyncio.sleep(next_delay())

    async def _listen_and_sequence(self) -> None:
        conn = await db.connect(self._database_url, application_name="ui_iot-events")
        try:
            await conn.add_listener("iot_twin_event", lambda *_: self._new_events.set())
            await conn.add_listener("iot_twin_sequenced", lambda *_: self._bump())
            self._new_events.set()
            self._bump()  # streams re-read whatever they missed while we were away
            loop = asyncio.get_running_loop()
            next_cleanup = loop.time()
            while True:
                if not await wait_event(self._new_events, _SAFETY_INTERVAL_S):
                    await conn.fetchval("SELECT 1")  # notice a dead LISTEN connection
                self._new_events.clear()
                if await self._sequence_all():
                    # Wakes the streams of every replica, this one included.
                    await conn.execute("SELECT pg_notify('iot_twin_sequenced', '')")
                if loop.time() >= next_cleanup:
                    next_cleanup = loop.time() + _RETENTION_INTERVAL_S
                    await self._clean_up()
        finally:
            conn.terminate()

    async def _sequence_all(self) -> int:
        total = 0
        while True:
            async with self._pool.acquire() as conn:
                if not await events_repo.has_unsequenced(conn):
                    return total
                async with conn.transaction():
                    numbered = await events_repo.sequence(conn, limit=_SEQUENCE_BATCH)
            total += numbered
            if numbered < _SEQUENCE_BATCH:
                return total

    async def _clean_up(self) -> None:
        while True:
            async with self._pool.acquire() as conn:
                deleted = await events_repo.delete_older_than(
                    conn, age=self._retention, limit=_RETENTION_BATCH
                )
            if deleted < _RETENTION_BATCH:
                return


def parse_last_event_id(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    event_id = parse_bigint_id(value.strip())
    if event_id is None:
        raise Unprocessable("Last-Event-ID must be an event id this stream sent")
    return event_id


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _frame(row: asyncpg.Record, *, stale_after: timedelta) -> bytes:
    kind: str = row["kind"]
    data: dict[str, object]
    if kind == "presence":
        data = {
            "device_id": row["device_id"],
            "connected": bool(row["connected"]),
            "connected_at": _iso(row["connected_at"]),
            "disconnected_at": _iso(row["disconnected_at"]),
            "at": row["at"].isoformat(),
        }
    else:
        data = {
            "device_id": row["device_id"],
            "desired_version": row["desired_version"],
            "reported_version": row["reported_version"],
            # The status at the moment of the change, so every replica sends the same bytes.
            "sync_status": twin.sync_status(
                row["desired_version"],
                row["reported_version"],
                row["last_seen"],
                now=row["at"],
                stale_after=stale_after,
                rejected_version=row["rejected_version"],
            ),
            "at": row["at"].isoformat(),
        }
        if kind == "deleted":
            data["deleted"] = True
        if kind == "shadow":  # a named shadow's change (SPEC §9); -1: it was deleted
            data["shadow"] = row["shadow"]
            if row["desired_version"] < 0:
                data.update(desired_version=0, sync_status="synced", deleted=True)
    return f"id: {row['seq']}\nevent: {kind}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


async def stream(
    hub: EventHub,
    pool: asyncpg.Pool,
    *,
    tenant_id: str,
    last_event_id: int | None,
    stale_after: timedelta,
) -> AsyncIterator[bytes]:
    """The tenant's events after ``last_event_id`` (or from now), then live, with heartbeats.

    Resuming from an id older than retention first sends ``event: reset``: the client must
    reload its view, since some changes are no longer kept. A lost database ends the stream;
    the client reconnects with ``Last-Event-ID`` and misses nothing.
    """
    try:
        async with pool.acquire() as conn:
            newest = await events_repo.last_seq(conn)
            oldest = await events_repo.oldest_seq(conn)
    except db.RETRYABLE_ERRORS as exc:
        log.warning("event stream could not start: %r", exc)
        return
    # An id from the future (another database, a typo) would silence the stream: clamp it.
    cursor = newest if last_event_id is None else min(last_event_id, newest)
    yield f"retry: {_RETRY_MS}\n: stream of tenant {tenant_id} from {cursor}\n\n".encode()
    if last_event_id is not None and cursor < (oldest if oldest is not None else newest + 1) - 1:
        yield (
            b"event: reset\ndata: "
            + orjson.dumps(
                {"reason": "events after this id are no longer kept; reload the fleet view"}
            )
            + b"\n\n"
        )
    while not hub.closed.is_set():
        generation = hub.generation
        try:
            async with pool.acquire() as conn:
                rows = await events_repo.after(
                    conn, tenant_id=tenant_id, after_seq=cursor, limit=_PAGE
                )
        except db.RETRYABLE_ERRORS as exc:
            log.warning("event stream lost the database: %r", exc)
            return
        if rows:
            cursor = rows[-1]["seq"]
            yield b"".join(_frame(row, stale_after=stale_after) for row in rows)
            continue
        if not await hub.wait_beyond(generation, hub.heartbeat_s) and not hub.closed.is_set():
            yield b": heartbeat\n\n"
