"""The private parts of paho-mqtt, aiomqtt and amqtt that this code relies on, checked by
shape, so that an upgrade that moves one fails here with its name instead of somewhere deep
in the MQTT link or the fallback broker.

Relied on by ``shared.mqtt`` (``streamline``, ``publish_nowait``, ``_Inbox``, the link's
manual PUBACKs) and ``iotcloud.fallback_broker``. pyproject.toml bounds the versions; when
raising a bound, run this first.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from amqtt.broker import Broker, BrokerContext


def _fail(library: str, name: str, why: str) -> None:
    pytest.fail(
        f"{library} changed shape: {name} {why}. shared.mqtt / iotcloud.fallback_broker rely on "
        "it; adapt them (or pin the previous version) before upgrading."
    )


def _method(library: str, owner: object, name: str, parameters: list[str]) -> Callable[..., Any]:
    method = getattr(owner, name, None)
    if not callable(method):
        _fail(library, name, "is gone or no longer callable")
    assert callable(method)
    found = [p for p in inspect.signature(method).parameters if p != "self"]
    if found != parameters:
        _fail(library, name, f"takes {found}, not {parameters}")
    return method


async def test_paho_and_aiomqtt_internals_used_by_the_mqtt_link() -> None:
    client = aiomqtt.Client("127.0.0.1", 1, identifier="shape-check")
    inner = getattr(client, "_client", None)
    if not isinstance(inner, paho.Client):
        _fail("aiomqtt", "Client._client", f"is {type(inner).__name__}, not a paho Client")
    assert isinstance(inner, paho.Client)
    disconnected = getattr(client, "_disconnected", None)
    if not isinstance(disconnected, asyncio.Future):
        _fail("aiomqtt", "Client._disconnected", "is no longer an asyncio Future")

    _method("paho-mqtt", inner, "_create_socket", [])
    _method("paho-mqtt", inner, "_update_inflight", [])
    _method("paho-mqtt", inner, "_handle_on_message", ["message"])
    _method("paho-mqtt", inner, "loop_write", [])
    _method("paho-mqtt", inner, "manual_ack_set", ["on"])
    _method("paho-mqtt", inner, "ack", ["mid", "qos"])
    _method("paho-mqtt", inner, "publish", ["topic", "payload", "qos", "retain", "properties"])
    if not hasattr(inner, "_sock"):
        _fail("paho-mqtt", "Client._sock", "is gone")
    if not isinstance(getattr(inner, "_out_messages", None), dict):
        _fail("paho-mqtt", "Client._out_messages", "is no longer a dict of messages")
    if not isinstance(getattr(inner, "_inflight_messages", None), int):
        _fail("paho-mqtt", "Client._inflight_messages", "is no longer a count")


async def test_amqtt_internals_used_by_the_fallback_broker() -> None:
    _method(
        "amqtt",
        Broker,
        "_handle_message_delivery",
        ["client_session", "handler", "wait_deliver"],
    )
    _method("amqtt", Broker, "add_subscription", ["subscription", "session"])
    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}})
    if not isinstance(getattr(broker, "_sessions", None), dict):
        _fail("amqtt", "Broker._sessions", "is no longer a dict of (session, handler)")
    if getattr(BrokerContext(broker), "_broker_instance", None) is not broker:
        _fail("amqtt", "BrokerContext._broker_instance", "no longer holds the broker")
