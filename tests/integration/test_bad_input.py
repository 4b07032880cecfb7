"""Input PostgreSQL cannot hold, or that does not fit its types, is refused with a clear
4xx (HTTP) or a /rejected reply (MQTT) and writes nothing; never a 500."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import orjson

from shared.topics import reported_topic
from tests.conftest import Stack


async def _twin(stack: Stack, headers: dict[str, str], device_id: str) -> dict[str, Any]:
    response = await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=headers)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


async def test_a_nul_character_in_a_desired_patch_is_422_and_writes_nothing(
    stack: Stack,
) -> None:
    _, admin = await stack.tenant("admin")
    device_id = (await stack.device(admin))["device_id"]
    for patch, pointer in (
        ({"mode\u0000": "eco"}, "/mode\u0000"),
        ({"mode": "eco\u0000"}, "/desired/mode"),
        ({"net": {"ssids": ["a", "b\u0000"]}}, "/desired/net/ssids/1"),
    ):
        response = await stack.ui.patch(
            f"/customer/devices/{device_id}/twin/desired", json={"desired": patch}, headers=admin
        )
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "NUL" in detail, detail
        if pointer.startswith("/desired"):
            assert repr(pointer) in detail, detail
    twin = await _twin(stack, admin, device_id)
    assert (twin["desired"], twin["desired_version"]) == ({}, 0)
    history = await stack.ui.get(f"/customer/devices/{device_id}/twin/history", headers=admin)
    assert history.json()["items"] == []


async def test_a_nul_character_in_a_model_schema_is_422_on_create_and_replace(
    stack: Stack,
) -> None:
    _, admin = await stack.tenant("admin")
    bad = {"type": "object", "properties": {"a\u0000": {"type": "string"}}}
    created = await stack.ui.post(
        "/customer/models", json={"model_id": "m1", "desired_schema": bad}, headers=admin
    )
    assert created.status_code == 422, created.text
    assert "NUL" in created.text
    assert (await stack.ui.get("/customer/models/m1", headers=admin)).status_code == 404
    good = await stack.ui.post(
        "/customer/models",
        json={"model_id": "m1", "desired_schema": {"type": "object"}},
        headers=admin,
    )
    assert good.status_code == 201, good.text
    replaced = await stack.ui.put(
        "/customer/models/m1",
        json={"desired_schema": {"type": "object"}, "reported_schema": {"title": "x\u0000"}},
        headers=admin,
    )
    assert replaced.status_code == 422, replaced.text
    assert "NUL" in replaced.text
    model = (await stack.ui.get("/customer/models/m1", headers=admin)).json()
    assert model["reported_schema"] is None


async def test_a_nul_character_anywhere_else_is_422_not_500(stack: Stack) -> None:
    """Fields that no twin rule reads (a device name, a query parameter) still reach the
    database; its refusal of NUL is answered as the client's error."""
    _, admin = await stack.tenant("admin")
    named = await stack.ui.post("/customer/devices", json={"name": "lamp\u0000"}, headers=admin)
    assert named.status_code == 422, named.text
    # A lone surrogate: Python's json module takes it, orjson and PostgreSQL do not.
    lone = await stack.ui.post(
        "/customer/devices",
        content=b'{"name": "lamp\\ud800"}',
        headers={**admin, "Content-Type": "application/json"},
    )
    assert lone.status_code == 422, lone.text
    listing = await stack.ui.get("/customer/devices", params={"q": "a\u0000"}, headers=admin)
    assert listing.status_code == 422, listing.text
    assert (await stack.ui.get("/customer/devices", headers=admin)).json()["items"] == []


async def test_history_cursors_out_of_range_or_not_ascii_digits_are_422(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    device_id = (await stack.device(admin))["device_id"]
    url = f"/customer/devices/{device_id}/twin/history"
    for cursor in ("9999999999999999999", "9223372036854775808", "\u00b2", "12a", "-1"):
        response = await stack.ui.get(url, params={"cursor": cursor}, headers=admin)
        assert response.status_code == 422, (cursor, response.text)
        assert "cursor" in response.json()["detail"]
    largest = await stack.ui.get(url, params={"cursor": "9223372036854775807"}, headers=admin)
    assert largest.status_code == 200, largest.text


async def test_if_match_with_a_non_ascii_digit_is_412_not_500(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    device_id = (await stack.device(admin))["device_id"]
    # b"\xb2" is "²" in Latin-1, as headers are decoded: a digit to str.isdigit, not to int.
    for tag in (b'"\xb2"', b'"99999999999999999999"'):
        response = await stack.ui.patch(
            f"/customer/devices/{device_id}/twin/desired",
            json={"desired": {"a": 1}},
            headers={**admin, "If-Match": tag},
        )
        assert response.status_code == 412, (tag, response.text)


async def test_a_nul_character_in_an_mqtt_report_is_rejected_and_writes_nothing(
    stack: Stack,
) -> None:
    tenant_id, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    device_id, token = created["device_id"], created["provision_token"]
    topic = reported_topic(tenant_id, device_id)
    async with aiomqtt.Client(
        "127.0.0.1", stack.broker.port, username=device_id, password=token, identifier=device_id
    ) as client:
        await client.subscribe(topic + "/+", qos=1)
        report = {"reported": {"text": "nul \u0000"}, "version": 0, "clientToken": "n-1"}
        await client.publish(topic, orjson.dumps(report), qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert message.topic.value == topic + "/rejected", message.topic.value
                reply = orjson.loads(message.payload)  # type: ignore[arg-type]
                break
    assert reply["accepted"] is False and reply["version"] == 0, reply
    assert reply["clientToken"] == "n-1"
    assert "NUL" in reply["error"] and "/reported/text" in reply["error"], reply
    twin = await _twin(stack, admin, device_id)
    assert (twin["reported"], twin["reported_version"]) == ({}, 0)
    assert twin["last_seen"] is not None
