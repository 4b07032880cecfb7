"""The services' own broker connection, kept up with capped random back-off (aiomqtt)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from shared.aio import raise_if_cancelled, wait_event

log = logging.getLogger(__name__)
# aiomqtt warns for every publish beyond ten awaiting their PUBACK; a batch's replies are
# hundreds at once by design.
_client_log = logging.getLogger(__name__ + ".client")
_client_log.setLevel(logging.ERROR)

BatchHandler = Callable[[list[paho.MQTTMessage]], Awaitable[None]]
ConnectHook = Callable[[], Coroutine[Any, Any, None]]

# Without it Nagle holds each reply behind the previous PUBACK's delayed ACK (~40 ms).
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
_READ_AHEAD = 64 * 1024
_PUBLISH_WINDOW = 10_000
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)  # Linux only

# The services' client ids start with this; a device's client id is its device id, which
# never does (SPEC §3), so the broker lets no device take a service's session.
SERVICE_CLIENT_PREFIX = "$iotcloud-"


@dataclass(frozen=True, slots=True)
class MqttTarget:
    host: str
    port: int
    username: str | None
    password: str | None

    def display(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttTarget:
    parts = urlsplit(url)
    if parts.scheme not in {"mqtt", "tcp"} or not parts.hostname:
        raise ValueError(f"MQTT_URL must look like mqtt://user:password@host:port, got {url!r}")
    return MqttTarget(
        host=parts.hostname,
        port=parts.port or 1883,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


class _ReadAheadSocket:
    """paho's socket, read in large chunks.

    paho reads every packet in three calls or more (its type byte, its length a byte at a
    time, then its body), each a system call; here one ``recv`` serves every packet that has
    arrived. ``pending()`` is the hook paho and aiomqtt have for the bytes a TLS socket
    buffers: aiomqtt's reader keeps reading while it is non-zero, so nothing waits in the
    buffer for the next readiness event.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""
        self._offset = 0
        self.send = sock.send
        self.fileno = sock.fileno

    def recv(self, size: int) -> bytes:
        if self._offset >= len(self._buffer):
            self._buffer = self._sock.recv(max(size, _READ_AHEAD))  # BlockingIOError: none
            self._offset = 0
        start = self._offset
        self._offset = min(start + size, len(self._buffer))
        return self._buffer[start : self._offset]

    def pending(self) -> int:
        return len(self._buffer) - self._offset

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def streamline(client: aiomqtt.Client, socket_options: tuple[tuple[int, int, int], ...]) -> None:
    """Less work per MQTT packet for one aiomqtt client: reads served from one ``recv``
    (:class:`_ReadAheadSocket`), everything paho writes in one go (the PUBACKs and replies
    of a whole batch, say) corked into as few TCP segments as fit, instead of a segment, and
    a wake-up of the broker, per packet, and no walk of the unacknowledged messages on a
    PUBACK when none is waiting to be sent. Call before connecting.

    aiomqtt applies ``socket_options`` only to a plain socket, so they are applied here.
    """
    paho_client = client._client
    create_socket = paho_client._create_socket

    def create_read_ahead_socket() -> Any:
        sock = create_socket()
        if not isinstance(sock, socket.socket):  # websockets or TLS: left as paho made them
            return sock
        for option in socket_options:
            sock.setsockopt(*option)
        return _ReadAheadSocket(sock)

    write = paho_client.loop_write

    def corked_write() -> MQTTErrorCode:
        sock = paho_client._sock
        if _TCP_CORK is None or not isinstance(sock, _ReadAheadSocket):
            return write()
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
        try:
            return write()
        finally:
            with contextlib.suppress(OSError):  # paho closed it (DISCONNECT sent, or lost)
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)

    update_inflight = paho_client._update_inflight

    def update_inflight_if_queued() -> MQTTErrorCode:
        # paho runs this on every PUBACK and it walks every unacknowledged message looking
        # for one still queued behind the in-flight window: with a wide window, hundreds of
        # steps per PUBACK when nothing is queued at all.
        if len(paho_client._out_messages) > paho_client._inflight_messages:
            return update_inflight()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    paho_client._create_socket = create_read_ahead_socket  # type: ignore[method-assign]
    paho_client.loop_write = corked_write  # type: ignore[method-assign]
    paho_client._update_inflight = update_inflight_if_queued  # type: ignore[method-assign]
    # paho formats a debug line for every packet it reads or writes; aiomqtt still raises
    # whatever goes wrong with the connection.
    paho_client.disable_logger()


def publish_nowait(
    client: aiomqtt.Client, topic: str, payload: bytes, *, qos: int = 1
) -> paho.MQTTMessageInfo:
    """Hand a message to the client without waiting for its PUBACK: paho completes QoS 1 by
    itself, holding back what exceeds its in-flight window. For many messages at a time,
    where awaiting each costs a task, a future and a timer."""
    info = client._client.publish(topic, payload, qos)
    if info.rc != paho.MQTT_ERR_SUCCESS:
        raise aiomqtt.MqttCodeError(info.rc, f"could not publish: {paho.error_string(info.rc)}")
    return info


def backoff_delays(base: float = 0.2, cap: float = 5.0) -> Callable[[], float]:
    """Full-jitter exponential back-off: each call returns the next delay."""
    attempt = 0

    def next_delay() -> float:
        nonlocal attempt
        attempt += 1
        return random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311 - jitter, not crypto

    return next_delay


class _Inbox:
    """The link's incoming messages as paho delivers them, taken a batch at a time.

    aiomqtt's queue would copy each into a Message of its own and wake a waiting task per
    message; a batch is taken here with one wake-up. Unbounded: a message dropped here would
    never be acknowledged, so it would sit unapplied until the next reconnect; the broker's
    in-flight window for the session bounds it.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._messages: collections.deque[paho.MQTTMessage] = collections.deque()
        self._arrived = asyncio.Event()
        # In place of paho's dispatch, which matches every message against per-topic
        # callbacks (the link has none) under two locks before it calls on_message.
        client._client._handle_on_message = self._arrive  # type: ignore[method-assign]

    def _arrive(self, message: paho.MQTTMessage) -> None:
        self._messages.append(message)
        self._arrived.set()

    async def take(self, limit: int) -> list[paho.MQTTMessage]:
        """What has arrived, at most ``limit`` messages; waits for one if none has. Raises
        MqttError once the connection is gone."""
        while not self._messages:
            self._arrived.clear()
            arrived = asyncio.ensure_future(self._arrived.wait())
            try:
                await asyncio.wait(
                    (arrived, self._client._disconnected), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                arrived.cancel()
            disconnected = self._client._disconnected
            if disconnected.done():
                cause = None if disconnected.cancelled() else disconnected.exception()
                raise aiomqtt.MqttError("disconnected while waiting for messages") from cause
        count = min(limit, len(self._messages))
        return [self._messages.popleft() for _ in range(count)]


class BrokerLink:
    """One service connection: subscriptions and reconnects.

    ``on_messages`` gets every message that has arrived (up to ``max_batch``) in one call, so
    a handler can apply many in one transaction; when the stream is quiet a batch is one
    message and nothing waits for more. ``manual_ack`` holds back the PUBACK of each QoS 1
    message until the handler has returned for its batch, so a message is acknowledged only
    after its effect is committed (at-least-once).

    How many messages can be out to the link unacknowledged, and so how large a batch can
    grow, is the broker's in-flight window for the session (Mosquitto's
    ``max_inflight_messages``); the rest wait in the broker's queue.
    """

    def __init__(
        self,
        target: MqttTarget,
        *,
        client_id: str,
        subscriptions: tuple[str, ...] = (),
        on_messages: BatchHandler | None = None,
        max_batch: int = 1,
        on_connect: ConnectHook | None = None,
        persistent: bool = False,
        manual_ack: bool = False,
    ) -> None:
        self._target = target
        self._client_id = client_id
        self._subscriptions = subscriptions
        self._on_messages = on_messages
        self._max_batch = max(1, max_batch)
        self._on_connect = on_connect
        self._persistent = persistent
        self._manual_ack = manual_ack
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()

    @property
    def target(self) -> MqttTarget:
        return self._target

    @property
    def client(self) -> aiomqtt.Client:
        if self._client is None or not self.connected.is_set():
            raise aiomqtt.MqttError("not connected to the broker")
        return self._client

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """:func:`publish_nowait` on the link's client."""
        publish_nowait(self.client, topic, payload, qos=qos)

    async def run(self) -> None:
        next_delay = backoff_delays()
        while True:
            try:
                await self._session()
            except Exception as exc:  # the loop outlives every failure; each one reconnects
                raise_if_cancelled()
                expected = (aiomqtt.MqttError, RetryLater)
                if isinstance(exc, ExceptionGroup) and exc.subgroup(expected) is not None:
                    exc = exc.exceptions[0]
                log.warning(
                    "broker connection to %s ended: %r; reconnecting",
                    self._target.display(),
                    exc,
                    exc_info=not isinstance(exc, expected),
                )
            finally:
                if self.connected.is_set():
                    next_delay = backoff_delays()
                self.connected.clear()
            await asyncio.sleep(next_delay())

    async def _session(self) -> None:
        client = aiomqtt.Client(
            self._target.host,
            self._target.port,
            username=self._target.username,
            password=self._target.password,
            identifier=self._client_id,
            clean_session=not self._persistent,
            protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=15,
            timeout=5,
            # QoS 1 messages out to the broker unacknowledged (paho's default is 20). Past
            # the window paho queues them until PUBACKs free it, and PUBACKs are read only
            # when the event loop is free of a batch's work: with 20, a burst's replies piled
            # up in paho's queue until its 16-bit message ids ran out ("message queue full").
            max_inflight_messages=_PUBLISH_WINDOW,
            logger=_client_log,
            socket_options=NO_DELAY,
        )
        streamline(client, NO_DELAY)
        # Before connecting: a persistent session's backlog arrives right after CONNACK.
        inbox = _Inbox(client)
        if self._manual_ack:
            # aiomqtt has no public switch for this; paho's client does.
            client._client.manual_ack_set(True)
        async with client:
            self._client = client
            for topic in self._subscriptions:
                await client.subscribe(topic, qos=1)
            self.connected.set()
            log.info("connected to broker %s as %s", self._target.display(), self._client_id)
            async with asyncio.TaskGroup() as tasks:
                if self._on_connect is not None:
                    # Concurrent with the message loop, which must keep draining the backlog.
                    tasks.create_task(self._on_connect(), name="on-broker-connect")
                await self._consume(client, inbox)

    async def _consume(self, client: aiomqtt.Client, inbox: _Inbox) -> None:
        while True:
            batch = await inbox.take(self._max_batch)
            if self._on_messages is not None:
                await self._on_messages(batch)
            if self._manual_ack:
                for message in batch:
                    if message.qos > 0:
                        client._client.ack(message.mid, message.qos)

    async def wait_connected(self, timeout: float) -> bool:
        return await wait_event(self.connected, timeout)


class RetryLater(Exception):
    """A handler could not take a message now (e.g. the database is down).

    The link drops the connection without acknowledging it, so the broker redelivers it
    to this persistent session (or another replica of the shared subscription).
    """
