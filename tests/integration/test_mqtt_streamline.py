"""The services' streamlined paho sockets (``shared.mqtt.streamline``) on a real Mosquitto:
reads served from one ``recv`` across packets and across payloads larger than one read,
corked writes, and a publisher whose window is smaller than what it has to send."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt

from shared.mqtt import (
    NO_DELAY,
    SERVICE_CLIENT_PREFIX,
    parse_mqtt_url,
    publish_nowait,
    streamline,
)
from tests.support import Broker


def service_client(broker: Broker, **options: int) -> aiomqtt.Client:
    target = parse_mqtt_url(broker.url)
    client = aiomqtt.Client(
        target.host,
        target.port,
        username=target.username,
        password=target.password,
        identifier=f"{SERVICE_CLIENT_PREFIX}streamline-{uuid.uuid4().hex[:8]}",
        timeout=5,
        socket_options=NO_DELAY,
        **options,
    )
    streamline(client, NO_DELAY)
    return client


async def test_every_message_arrives_whole_and_in_order(broker: Broker) -> None:
    topic = f"tenant/streamline/device/{uuid.uuid4().hex[:8]}/shadow/reported"
    # Small ones many to a read, then ones that each span several 64 KiB reads.
    payloads = [f"small-{n}".encode() for n in range(500)]
    payloads += [bytes([n]) * (150_000 + n) for n in range(5)]
    received: list[bytes] = []
    async with service_client(broker) as receiver:
        await receiver.subscribe(topic, qos=1)
        # A window of 5 for 505 messages: paho queues the rest and sends one per PUBACK.
        async with service_client(broker, max_inflight_messages=5) as sender:
            sent = [publish_nowait(sender, topic, payload) for payload in payloads]
            async with asyncio.timeout(30):
                async for message in receiver.messages:
                    assert isinstance(message.payload, bytes)
                    received.append(message.payload)
                    if len(received) == len(payloads):
                        break
            async with asyncio.timeout(10):
                while not all(info.is_published() for info in sent):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
    assert received == payloads


async def test_a_connection_that_drops_is_reported(broker: Broker) -> None:
    """What paho reads through the wrapper still tells a closed connection from no data."""
    async with service_client(broker) as client:
        await client.subscribe("tenant/streamline/#", qos=1)
        broker.kill()
        try:
            async with asyncio.timeout(10):
                async for _ in client.messages:
                    pass
        except aiomqtt.MqttError:
            return
    raise AssertionError("the client did not notice that the broker went away")
