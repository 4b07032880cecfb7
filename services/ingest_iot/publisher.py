"""Desired state out: the retained message of every device converges on the database.

The database records which desired version has been published. One publisher at a time
(a session advisory lock elects it among replicas) sends what is behind: woken by
LISTEN/NOTIFY on every desired write, and in full after every broker (re)connect, since a
restarted broker may have lost retained messages.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import orjson

from ingest_iot.metrics import DESIRED_LAG, DESIRED_PUBLISHED
from shared import db
from shared.aio import wait_event
from shared.mqtt import BrokerLink, backoff_delays
from shared.repositories import delivery
from shared.topics import desired_topic

log = logging.getLogger(__name__)

_LEADER_LOCK = 0x10_7C_0D_E5
_BATCH = 500
_SAFETY_INTERVAL_S = 10.0


class DesiredPublisher:
    def __init__(self, pool: asyncpg.Pool, link: BrokerLink, database_url: str) -> None:
        self._pool = pool
        self._link = link
        self._database_url = database_url
        self._wake = asyncio.Event()
        self._full_pending = True
        self.leader = False

    def broker_connected(self) -> None:
        """Called on every broker (re)connect: republish everything once."""
        self._full_pending = True
        self._wake.set()

    async def run(self) -> None:
        next_delay = backoff_delays()
        while True:
            try:
                await self._lead()
            except Exception as exc:  # the loop outlives every failure; each one starts over
                log.warning(
                    "desired publisher lost the database: %r",
                    exc,
                    exc_info=not isinstance(exc, db.RETRYABLE_ERRORS),
                )
            finally:
                self.leader = False
            await asyncio.sleep(next_delay())

    async def _lead(self) -> None:
        conn = await db.connect(self._database_url, application_name="ingest_iot-publisher")
        try:
            await conn.add_listener("iot_desired", lambda *_: self._wake.set())
            # Another replica holds the lock while it lives; poll for it, there is no event.
            while not await conn.fetchval(  # noqa: ASYNC110
                "SELECT pg_try_advisory_lock($1)", _LEADER_LOCK
            ):
                await asyncio.sleep(1.0)
            self.leader = True
            self._full_pending = True
            self._wake.set()
            log.info("this replica publishes desired state")
            while True:
                if not await wait_event(self._wake, _SAFETY_INTERVAL_S):
                    await conn.fetchval("SELECT 1")  # notice a dead LISTEN connection
                self._wake.clear()
                if not self._link.connected.is_set():
                    continue
                try:
                    await self._flush()
                except Exception as exc:  # broker went away mid-flush: retry on reconnect
                    if not isinstance(exc, db.RETRYABLE_ERRORS):
                        log.warning("desired publish interrupted: %r", exc)
                        continue
                    raise
        finally:
            conn.terminate()

    async def _flush(self) -> None:
        if self._full_pending:
            self._full_pending = False
            await self._republish_all()
        while True:
            async with self._pool.acquire() as conn:
                rows = await delivery.unpublished(conn, limit=_BATCH)
            # Out before the next query: a desired write waits for nothing else.
            await self._publish(rows)
            async with self._pool.acquire() as conn:
                gone = await delivery.cleanups(conn, limit=_BATCH)
            if not rows and not gone:
                DESIRED_LAG.set(0)
                return
            if gone:
                await asyncio.gather(
                    *(
                        self._link.client.publish(
                            desired_topic(row["tenant_id"], row["device_id"]),
                            b"",
                            qos=1,
                            retain=True,
                        )
                        for row in gone
                    )
                )
                async with self._pool.acquire() as conn:
                    await delivery.cleared(conn, [row["device_id"] for row in gone])
            async with self._pool.acquire() as conn:
                DESIRED_LAG.set(await delivery.oldest_unpublished_age(conn))

    async def _republish_all(self) -> None:
        after = ""
        while True:
            async with self._pool.acquire() as conn:
                rows = await delivery.all_desired(conn, after=after, limit=_BATCH)
            if not rows:
                return
            await self._publish(rows)
            after = rows[-1]["device_id"]

    async def _publish(self, rows: list[asyncpg.Record]) -> None:
        """Publish retained QoS 1 and wait for every PUBACK before recording the versions."""
        if not rows:
            return
        client = self._link.client
        await asyncio.gather(
            *(
                client.publish(
                    desired_topic(row["tenant_id"], row["device_id"]),
                    orjson.dumps(
                        {"desired": row["desired_state"], "version": row["desired_version"]}
                    ),
                    qos=1,
                    retain=True,
                )
                for row in rows
            )
        )
        DESIRED_PUBLISHED.inc(len(rows))
        async with self._pool.acquire() as conn:
            await delivery.mark_published(
                conn, [row["device_id"] for row in rows], [row["desired_version"] for row in rows]
            )
