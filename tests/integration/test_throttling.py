"""Throttling and event-loop safety (issue #15): failed sign-ins throttled per account and
per address, argon2 beside the event loop, model patterns that cannot stall the service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import Stack, make_settings, running_stack
from tests.support import Broker

PASSWORD = "pw-123456"  # Stack.tenant's


@pytest.fixture
async def strict(database_url: str, broker: Broker) -> AsyncIterator[Stack]:
    settings = make_settings(
        database_url,
        broker.url,
        sign_in_account_failures=3,
        sign_in_ip_failures=6,
        sign_in_lockout_s=1,
    )
    async with running_stack(settings, broker) as running:
        yield running


async def email_of(stack: Stack, headers: dict[str, str]) -> str:
    (me,) = (await stack.ui.get("/customer/users", headers=headers)).json()["items"]
    return str(me["email"])


async def sign_in(stack: Stack, email: str, password: str) -> tuple[int, dict[str, str]]:
    response = await stack.ui.post("/auth/token", data={"username": email, "password": password})
    return response.status_code, dict(response.headers)


async def test_failed_sign_ins_lock_the_account_for_a_while(strict: Stack) -> None:
    _tenant, admin = await strict.tenant("admin")
    email = await email_of(strict, admin)
    for _ in range(3):
        assert (await sign_in(strict, email, "wrong-password"))[0] == 401
    # Locked: even the right password is refused, before any hashing.
    status, headers = await sign_in(strict, email, PASSWORD)
    assert status == 429
    assert 1 <= int(headers["retry-after"]) <= 2
    # The session endpoint of the console is throttled alike.
    session = await strict.ui.post("/auth/session", data={"username": email, "password": PASSWORD})
    assert session.status_code == 429
    audit = (await strict.ui.get("/customer/audit", headers=admin)).json()["items"]
    throttled = [entry for entry in audit if entry["action"] == "auth.sign_in_throttled"]
    assert len(throttled) == 1
    assert throttled[0]["target"] == f"account:{email}"
    assert throttled[0]["detail"]["email"] == email
    assert [e["action"] for e in audit].count("auth.sign_in_failed") == 3
    # The lock-out ends; a success clears the account's count.
    await asyncio.sleep(int(headers["retry-after"]) + 0.1)
    assert (await sign_in(strict, email, PASSWORD))[0] == 200
    assert (await sign_in(strict, email, "wrong-password"))[0] == 401
    assert (await sign_in(strict, email, PASSWORD))[0] == 200


async def test_failures_from_one_address_lock_that_address(strict: Stack) -> None:
    _tenant, admin = await strict.tenant("admin")
    email = await email_of(strict, admin)
    # Guessing across many accounts, two tries each: no account reaches its limit.
    for n in range(3):
        for _ in range(2):
            assert (await sign_in(strict, f"guess-{n}@nowhere.test", "password-1"))[0] == 401
    status, headers = await sign_in(strict, email, PASSWORD)
    assert status == 429 and int(headers["retry-after"]) >= 1


async def test_password_hashing_does_not_stall_the_event_loop(stack: Stack) -> None:
    _tenant, admin = await stack.tenant("admin")
    email = await email_of(stack, admin)
    started = time.monotonic()
    latencies: list[float] = []

    async def probe() -> None:
        while time.monotonic() - started < burst_seconds[0]:
            before = time.monotonic()
            assert (await stack.ui.get("/healthz")).status_code == 200
            latencies.append(time.monotonic() - before)
            await asyncio.sleep(0.005)

    burst_seconds = [10.0]

    async def burst() -> float:
        began = time.monotonic()
        results = await asyncio.gather(*(sign_in(stack, email, PASSWORD) for _ in range(8)))
        assert [status for status, _ in results] == [200] * 8
        burst_seconds[0] = 0.0  # stop probing
        return time.monotonic() - began

    took, _ = await asyncio.gather(burst(), probe())
    assert latencies
    # On the loop, eight argon2 hashes would hold a probe for most of the burst.
    assert max(latencies) < took / 2, (max(latencies), took)


PATHOLOGICAL = "^(a+)+$"


async def test_a_pathological_pattern_stalls_nobody(stack: Stack) -> None:
    _tenant, admin = await stack.tenant("admin")
    _other, other_admin = await stack.tenant("admin")
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "pattern": PATHOLOGICAL}},
        "patternProperties": {PATHOLOGICAL: {"type": "integer"}},
        "additionalProperties": {"type": "string", "pattern": PATHOLOGICAL},
    }
    created = await stack.ui.post(
        "/customer/models", json={"model_id": "evil", "desired_schema": schema}, headers=admin
    )
    assert created.status_code == 201, created.text
    device = await stack.device(admin)
    assigned = await stack.ui.patch(
        f"/customer/devices/{device['device_id']}", json={"model_id": "evil"}, headers=admin
    )
    assert assigned.status_code == 200, assigned.text
    other_device = await stack.device(other_admin)
    # Python's re needs exponential time for this input (2^40 paths); RE2 is linear.
    attack = "a" * 40 + "b"
    write = stack.ui.patch(
        f"/customer/devices/{device['device_id']}/twin/desired",
        json={"desired": {"label": attack, "b" + attack: "x", attack: attack}},
        headers=admin,
    )
    other_read = stack.ui.get(
        f"/customer/devices/{other_device['device_id']}/twin", headers=other_admin
    )
    started = time.monotonic()
    written, read = await asyncio.gather(write, other_read)
    assert time.monotonic() - started < 2.0
    assert read.status_code == 200
    assert written.status_code == 422, written.text
    pointers = {error["pointer"] for error in written.json()["detail"]["errors"]}
    assert "/label" in pointers
    # A matching document passes.
    good = await stack.ui.patch(
        f"/customer/devices/{device['device_id']}/twin/desired",
        json={"desired": {"label": "aaaa", "aa": 3}},
        headers=admin,
    )
    assert good.status_code == 200, good.text


async def test_a_pattern_re2_cannot_run_is_refused_not_stored(stack: Stack) -> None:
    _tenant, admin = await stack.tenant("admin")
    for pattern, where in (
        ("^(?=a)a+$", "/desired_schema/properties/label/pattern"),
        ("^(a)\\1$", "/desired_schema/properties/label/pattern"),
        ("(", "/desired_schema/properties/label/pattern"),
    ):
        schema = {"type": "object", "properties": {"label": {"type": "string", "pattern": pattern}}}
        refused = await stack.ui.post(
            "/customer/models", json={"model_id": "m", "desired_schema": schema}, headers=admin
        )
        assert refused.status_code == 422, (pattern, refused.text)
        errors = refused.json()["detail"]["errors"]
        assert errors[0]["pointer"] == where
        assert "RE2" in errors[0]["message"] or "regex" in errors[0]["message"]
        assert (await stack.ui.get("/customer/models/m", headers=admin)).status_code == 404
    key_refused = await stack.ui.post(
        "/customer/models",
        json={"model_id": "m", "desired_schema": {"patternProperties": {"(?<=x)y": {}}}},
        headers=admin,
    )
    assert key_refused.status_code == 422
    combined = await stack.ui.post(
        "/customer/models",
        json={
            "model_id": "m",
            "desired_schema": {"patternProperties": {"^a": {}}, "unevaluatedProperties": False},
        },
        headers=admin,
    )
    assert combined.status_code == 422
    assert (await stack.ui.get("/customer/models/m", headers=admin)).status_code == 404
