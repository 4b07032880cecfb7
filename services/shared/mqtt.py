"""The services' own broker connection, kept up with capped random back-off (aiomqtt)."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho

from shared.aio import wait_event
from shared.dynsec import RESPONSE_TOPIC, DynSecClient

log = logging.getLogger(__name__)
# aiomqtt warns for every publish beyond ten awaiting their PUBACK; a batch's replies are
# hundreds at once by design.
_client_log = logging.getLogger(__name__ + ".client")
_client_log.setLevel(logging.ERROR)

BatchHandler = Callable[[list[aiomqtt.Message]], Awaitable[None]]
ConnectHook = Callable[[], Coroutine[Any, Any, None]]


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


def backoff_delays(base: float = 0.2, cap: float = 5.0) -> Callable[[], float]:
    """Full-jitter exponential back-off: each call returns the next delay."""
    attempt = 0

    def next_delay() -> float:
        nonlocal attempt
        attempt += 1
        return random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311 - jitter, not crypto

    return next_delay


class BrokerLink:
    """One service connection: subscriptions, dynamic-security commands, reconnects.

    ``on_messages`` gets every message that has arrived (up to ``max_batch``) in one call, so
    a handler can apply many in one transaction; when the stream is quiet a batch is one
    message and nothing waits for more. ``manual_ack`` holds back the PUBACK of each QoS 1
    message until the handler has returned for its batch, so a message is acknowledged only
    after its effect is committed (at-least-once).
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
        self.dynsec: DynSecClient | None = None
        self.connected = asyncio.Event()

    @property
    def client(self) -> aiomqtt.Client:
        if self._client is None or not self.connected.is_set():
            raise aiomqtt.MqttError("not connected to the broker")
        return self._client

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Hand a message to the client without waiting for its PUBACK (the client completes
        QoS 1 by itself): for a batch's replies, hundreds at a time, where awaiting each
        costs a task and a timer."""
        info = self.client._client.publish(topic, payload, qos)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "could not publish")

    async def run(self) -> None:
        next_delay = backoff_delays()
        while True:
            try:
                await self._session()
            except Exception as exc:  # the loop outlives every failure; each one reconnects
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
                self.dynsec = None
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
            # Unbounded: a message aiomqtt drops here is never acknowledged, so it would sit
            # unapplied until the next reconnect. Mosquitto 2.0.11 does not hold a client that
            # also publishes QoS 1 to its in-flight window, so its backlog arrives at once;
            # the broker's own queue limit bounds it.
            max_queued_incoming_messages=0,
            logger=_client_log,
            # Without it Nagle holds each reply behind the previous PUBACK's delayed ACK (~40 ms).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        if self._manual_ack:
            # aiomqtt has no public switch for this; paho's client does.
            client._client.manual_ack_set(True)
        async with client:
            self._client = client
            self.dynsec = DynSecClient(client)
            await client.subscribe(RESPONSE_TOPIC, qos=1)
            for topic in self._subscriptions:
                await client.subscribe(topic, qos=1)
            self.connected.set()
            log.info("connected to broker %s as %s", self._target.display(), self._client_id)
            async with asyncio.TaskGroup() as tasks:
                if self._on_connect is not None:
                    # Concurrent with the message loop: it may await control-API responses.
                    tasks.create_task(self._on_connect(), name="on-broker-connect")
                await self._consume(client)

    async def _consume(self, client: aiomqtt.Client) -> None:
        assert self.dynsec is not None
        messages = client.messages
        async for first in messages:
            batch = [first]
            # Take what has already arrived straight off aiomqtt's queue (its iterator costs
            # a task per message); nothing waits for more.
            queue = client._queue
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            handed: list[aiomqtt.Message] = []
            for message in batch:
                if message.topic.value == RESPONSE_TOPIC:
                    if isinstance(message.payload, bytes):
                        self.dynsec.handle_response(message.payload)
                else:
                    handed.append(message)
            if handed and self._on_messages is not None:
                await self._on_messages(handed)
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
