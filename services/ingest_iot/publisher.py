"""Desired state out: the retained message of every device converges on the database.

The database records which desired version has been published, and when (a publish
number). One publisher at a time (a session advisory lock elects it among replicas) sends
what is behind, woken by LISTEN/NOTIFY on every desired write.

After every broker (re)connect it reads the broker's retained delivery marker,
``{"epoch", "seq"}``, which it re-publishes after each batch: a broker that restarted from
its saved store holds every retained message numbered up to ``seq``, so only the later ones
go out again. A broker without the marker (or with another epoch) is fresh: it gets a new
epoch and every device's desired state, page by page in the background, resumable from the
database (``broker_delivery.resync_after``); new writes go out between pages.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import aiomqtt
import asyncpg
import orjson

from ingest_iot import presence
from ingest_iot.metrics import DESIRED_LAG, DESIRED_PUBLISHED
from shared import aws_shadow, db
from shared.aio import raise_if_cancelled, wait_event, within
from shared.mqtt import SERVICE_CLIENT_PREFIX, BrokerLink, MqttTarget, backoff_delays
from shared.repositories import delivery, shadow_outbox
from shared.repositories import shadows as shadows_repo
from shared.services import fleet_history
from shared.topics import DELIVERY_MARKER_TOPIC, aws_prefix, desired_topic, named_desired_topic

log = logging.getLogger(__name__)

_LEADER_LOCK = 0x10_7C_0D_E5
_BATCH = 500
_RESYNC_PAGE = 200  # a new write waits for at most one page of a background fill
_SAFETY_INTERVAL_S = 10.0
# Publishes in flight at once from one gather. aiomqtt checks each new publish against every
# pending one (a linear scan, twice), so n at once cost O(n^2): one round of the AWS outbox
# (up to 500 bulk batches of 500 devices, two messages each) held the event loop for
# minutes at 100,000 devices, and the device HTTP API with it (docs/benchmarks.md).
_SENDS_AT_ONCE = 500


async def read_marker(target: MqttTarget, *, timeout: float = 2.0) -> dict[str, object] | None:
    """The broker's retained delivery marker, or None when it has none."""
    async with aiomqtt.Client(
        target.host,
        target.port,
        username=target.username,
        password=target.password,
        identifier=f"{SERVICE_CLIENT_PREFIX}marker-{uuid.uuid4().hex[:10]}",
        timeout=timeout,
    ) as client:
        await client.subscribe(DELIVERY_MARKER_TOPIC, qos=1)

        async def first() -> bytes:
            async for message in client.messages:
                return bytes(message.payload) if isinstance(message.payload, bytes) else b""
            return b""

        try:
            # Mosquitto sends a retained message right after the SUBACK.
            payload = await within(first(), 1.0)
        except TimeoutError:
            return None
    try:
        marker = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return marker if isinstance(marker, dict) else None


class DesiredPublisher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        link: BrokerLink,
        database_url: str,
        *,
        stale_after: timedelta = timedelta(hours=1),
        aws_topics: bool = True,
    ) -> None:
        self._aws_topics = aws_topics
        self._pool = pool
        self._stale_after = stale_after
        self._link = link
        self._database_url = database_url
        self._broker = link.target.display()
        self._wake = asyncio.Event()
        self._check_broker = True
        self._epoch: str | None = None
        self._resync = asyncio.Event()
        self._publishing = asyncio.Lock()  # one page at a time: no older state after a newer
        self.leader = False
        self.republished = 0  # sent again after the last broker connect: what it had lost
        self.filled = 0  # sent to fill fresh brokers
        self.recoveries = 0  # broker connects handled
        self.named_refill = 0  # named shadows queued again after the last broker connect

    def broker_connected(self) -> None:
        """Called on every broker (re)connect: find out what the broker kept."""
        self._check_broker = True
        self._epoch = None  # no marker moves until we know what this broker kept
        self._wake.set()

    async def run(self) -> None:
        next_delay = backoff_delays()
        while True:
            try:
                await self._lead()
            except Exception as exc:  # the loop outlives every failure; each one starts over
                raise_if_cancelled()
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
            self._check_broker = True
            self._wake.set()
            log.info("this replica publishes desired state")
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._fill_fresh_broker(), name="desired-resync")
                # Leader-only work that is not about desired state: one replica at a time.
                tasks.create_task(
                    presence.keep_connected_seen(self._pool, stale_after=self._stale_after),
                    name="presence-refresh",
                )
                tasks.create_task(
                    fleet_history.keep_sampling(self._pool, stale_after=self._stale_after),
                    name="fleet-count-samples",
                )
                await self._serve(conn)
        finally:
            conn.terminate()

    async def _serve(self, conn: asyncpg.Connection) -> None:
        while True:
            if not await wait_event(self._wake, _SAFETY_INTERVAL_S):
                await conn.fetchval("SELECT 1")  # notice a dead LISTEN connection
            self._wake.clear()
            if not self._link.connected.is_set():
                continue
            try:
                if self._check_broker:
                    await self._recover_broker()
                    self._check_broker = False
                await self._flush()
            except Exception as exc:  # broker went away mid-flush: retry on reconnect
                raise_if_cancelled()
                if not isinstance(exc, db.RETRYABLE_ERRORS):
                    log.warning("desired publish interrupted: %r", exc)
                    continue
                raise

    async def _recover_broker(self) -> None:
        """What did the broker keep? Republish what it may have lost, or fill it afresh."""
        marker = await read_marker(self._link.target)
        async with self._pool.acquire() as conn:
            state = await delivery.broker_state(conn, self._broker)
        self.republished = self.named_refill = 0
        if state is not None and marker is not None and marker.get("epoch") == state["epoch"]:
            self._epoch = state["epoch"]
            seq = marker.get("seq")
            after = ""
            while isinstance(seq, int):
                async with self._publishing:
                    async with self._pool.acquire() as conn:
                        rows = await delivery.published_after(
                            conn, seq=seq, after=after, limit=_BATCH
                        )
                    if not rows:
                        break
                    await self._publish(rows)
                self.republished += len(rows)
                after = rows[-1]["device_id"]
            if isinstance(seq, int):
                async with self._pool.acquire() as conn:
                    self.named_refill = await shadows_repo.republish_all(conn, after_seq=seq)
            log.info(
                "broker kept its retained store (epoch %s): %d desired states sent again",
                self._epoch,
                self.republished,
            )
            if state["resync_after"] is not None:
                self._resync.set()
            self.recoveries += 1
            return
        self._epoch = uuid.uuid4().hex
        async with self._pool.acquire() as conn:
            await delivery.start_epoch(conn, self._broker, epoch=self._epoch)
            # Named shadows' retained desired messages: all of them again, by the flush.
            self.named_refill = await shadows_repo.republish_all(conn)
        log.info("broker %s has no delivery marker: filling it in the background", self._broker)
        self._resync.set()
        self.recoveries += 1

    async def _fill_fresh_broker(self) -> None:
        """Every device's desired state to a fresh broker, a page at a time, resumable."""
        while True:
            await self._resync.wait()
            self._resync.clear()
            try:
                while self._link.connected.is_set() and self._epoch is not None:
                    epoch = self._epoch
                    async with self._publishing:
                        async with self._pool.acquire() as conn:
                            state = await delivery.broker_state(conn, self._broker)
                            if state is None or state["epoch"] != epoch:
                                break
                            after = state["resync_after"]
                            if after is None:
                                log.info("broker %s holds every desired state", self._broker)
                                break
                            rows = await delivery.not_published_since(
                                conn, seq=state["fill_below"], after=after, limit=_RESYNC_PAGE
                            )
                        await self._publish(rows)
                        async with self._pool.acquire() as conn:
                            await delivery.filled_up_to(
                                conn,
                                self._broker,
                                epoch=epoch,
                                after=rows[-1]["device_id"] if rows else None,
                            )
                    self.filled += len(rows)
                    await asyncio.sleep(0)  # the flush's turn
            except Exception as exc:  # picked up again at the next broker connect
                raise_if_cancelled()
                log.warning("background fill of the broker interrupted: %r", exc)

    async def _flush(self) -> None:
        while True:
            async with self._publishing:
                async with self._pool.acquire() as conn:
                    rows = await delivery.unpublished(conn, limit=_BATCH)
                # Out before the next query: a desired write waits for nothing else.
                await self._publish(rows)
            named = await self._publish_named()
            async with self._pool.acquire() as conn:
                gone = await delivery.cleanups(conn, limit=_BATCH)
            if not rows and not gone and not named:
                DESIRED_LAG.set(0)
                return
            if gone:
                topics = [desired_topic(row["tenant_id"], row["device_id"]) for row in gone]
                topics += [
                    named_desired_topic(row["tenant_id"], row["device_id"], name)
                    for row in gone
                    for name in row["shadows"]
                ]
                await asyncio.gather(
                    *(self._link.client.publish(topic, b"", qos=1, retain=True) for topic in topics)
                )
                async with self._pool.acquire() as conn:
                    await delivery.cleared(conn, [row["device_id"] for row in gone])
            async with self._pool.acquire() as conn:
                DESIRED_LAG.set(await delivery.oldest_unpublished_age(conn))

    async def _publish_named(self) -> int:
        """Named shadows' desired state (retained, like the classic one) and the AWS
        topics' messages of operator writes (not retained); how many went out."""
        client = self._link.client
        async with self._pool.acquire() as conn:
            rows = await shadows_repo.unpublished(conn, limit=_BATCH)
            outbox = await shadow_outbox.take(conn, limit=_BATCH)
        if rows:
            await asyncio.gather(
                *(
                    client.publish(
                        named_desired_topic(row["tenant_id"], row["device_id"], row["name"]),
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
                seq = await shadows_repo.mark_published(
                    conn,
                    [row["device_id"] for row in rows],
                    [row["name"] for row in rows],
                    [row["desired_version"] for row in rows],
                )
            await self._move_marker(seq)
        if outbox and not self._aws_topics:
            async with self._pool.acquire() as conn:  # no AWS topics on this broker
                await shadow_outbox.sent(conn, [entry["id"] for entry in outbox])
            outbox = []
        if outbox:
            sends: list[Coroutine[Any, Any, Any]] = []
            for entry in outbox:
                if entry["devices"] is not None:
                    sends.extend(await self._bulk_messages(entry["devices"], entry["previous"]))
                    continue
                prefix = aws_prefix(entry["device_id"], entry["shadow"])
                if entry["delta"] is not None:
                    sends.append(
                        client.publish(prefix + "update/delta", orjson.dumps(entry["delta"]), qos=1)
                    )
                sends.append(
                    client.publish(
                        prefix + "update/documents", orjson.dumps(entry["documents"]), qos=1
                    )
                )
                if entry["shadow"] and entry["documents"].get("current") is None:
                    # A named shadow deleted: its retained desired message goes too.
                    topic = named_desired_topic(
                        entry["tenant_id"], entry["device_id"], entry["shadow"]
                    )
                    sends.append(client.publish(topic, b"", qos=1, retain=True))
            await send_in_chunks(sends)
            async with self._pool.acquire() as conn:
                await shadow_outbox.sent(conn, [entry["id"] for entry in outbox])
        return len(rows) + len(outbox)

    async def _bulk_messages(
        self, device_ids: list[str], previous: dict[str, Any] | None
    ) -> list[Coroutine[Any, Any, Any]]:
        """A bulk job batch's AWS messages: each device's ``update/delta`` and
        ``update/documents`` as its classic shadow stands now, with ``previous`` as the
        batch recorded it before its write (null for a batch queued before 020)."""
        client = self._link.client
        async with self._pool.acquire() as conn:
            rows = await shadow_outbox.classic_shadows(conn, device_ids=device_ids)
        sends: list[Coroutine[Any, Any, Any]] = []
        for row in rows:
            current = aws_shadow.Snapshot.of(row)
            at = row["shadow_updated_at"]
            prefix = aws_prefix(row["device_id"], "")
            delta = aws_shadow.delta_message(current, at=at)
            if delta is not None:
                sends.append(client.publish(prefix + "update/delta", orjson.dumps(delta), qos=1))
            documents = aws_shadow.documents_message(None, current, at=at)
            documents["previous"] = (previous or {}).get(row["device_id"])
            sends.append(
                client.publish(prefix + "update/documents", orjson.dumps(documents), qos=1)
            )
        return sends

    async def _publish(self, rows: list[asyncpg.Record]) -> None:
        """Publish retained QoS 1, wait for every PUBACK, record the versions, then move the
        broker's marker past them (it is only ever behind what the broker holds)."""
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
            seq = await delivery.mark_published(
                conn, [row["device_id"] for row in rows], [row["desired_version"] for row in rows]
            )
        await self._move_marker(seq)

    async def _move_marker(self, seq: int) -> None:
        """The broker's marker past publish number ``seq``, whose messages it acknowledged
        (an older marker sent late only makes a restore send more again)."""
        if self._epoch is not None:
            await self._link.client.publish(
                DELIVERY_MARKER_TOPIC,
                orjson.dumps({"epoch": self._epoch, "seq": seq}),
                qos=1,
                retain=True,
            )


async def send_in_chunks(
    sends: list[Coroutine[Any, Any, Any]], *, at_once: int = _SENDS_AT_ONCE
) -> None:
    """Await ``sends`` (publish calls not yet started) ``at_once`` at a time, in order. If
    one fails, those not started are closed (never run) and the error goes up."""
    started = 0
    try:
        while started < len(sends):
            chunk = sends[started : started + at_once]
            started += len(chunk)
            await asyncio.gather(*chunk)
    finally:
        for send in sends[started:]:
            send.close()
