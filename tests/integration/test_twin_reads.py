"""Coalesced twin reads (``shared.services.twin_reads``): reads waiting together go in one
query, each answered for its own tenant only, never from a snapshot older than its request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from shared import db
from tests.conftest import Stack
from tests.support import eventually


@contextlib.asynccontextmanager
async def reads_stalled(stack: Stack) -> AsyncIterator[None]:
    """Stall the twin query (it joins device_models) until the block ends."""
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE device_models IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def query_waiting(stack: Stack) -> bool:
    conn = await db.connect(stack.settings.database_url, application_name="tests")
    try:
        return bool(
            await conn.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE application_name = 'ui_iot' AND wait_event_type = 'Lock'"""
            )
        )
    finally:
        await conn.close()


def reads_queued(stack: Stack, count: int) -> Any:
    reads = stack.ui_app.state.twin_reads

    async def check() -> bool:
        return len(reads._waiting) >= count

    return check


async def test_coalesced_reads_keep_tenants_apart_and_see_what_committed_before(
    stack: Stack,
) -> None:
    _, admin_a = await stack.tenant("admin")
    _, admin_b = await stack.tenant("admin")
    _, viewer_a = await stack.tenant("viewer")
    a1 = (await stack.device(admin_a, device_id="co-a1"))["device_id"]
    a2 = (await stack.device(admin_a, device_id="co-a2"))["device_id"]
    b1 = (await stack.device(admin_b, device_id="co-b1"))["device_id"]

    def twin(device_id: str, headers: dict[str, str]) -> Any:
        return stack.ui.get(f"/customer/devices/{device_id}/twin", headers=headers)

    async with reads_stalled(stack):
        first = asyncio.gather(twin(a1, admin_a))  # its query started before the write below
        await eventually(lambda: query_waiting(stack))
        written = await stack.ui.patch(
            f"/customer/devices/{a2}/twin/desired", json={"desired": {"fan": "on"}}, headers=admin_a
        )
        assert written.status_code == 200
        # Waiting together for the next query: own devices, another tenant's, an unknown one.
        later = asyncio.gather(
            twin(a2, admin_a),
            twin(b1, admin_a),
            twin(a2, admin_b),
            twin(b1, admin_b),
            twin("co-nobody", admin_b),
            twin(a1, viewer_a),
            twin(a2, admin_a),
        )
        await eventually(reads_queued(stack, 7))
    (alone,) = await first
    assert alone.status_code == 200 and alone.json()["device_id"] == a1
    own_a2, a_reads_b1, b_reads_a2, own_b1, unknown, other_tenant_viewer, again = await later
    for response, device_id in ((own_a2, a2), (own_b1, b1)):
        assert response.status_code == 200
        assert response.json()["device_id"] == device_id
    # The write committed before these reads arrived: they see it, ETag and metadata too.
    assert own_a2.json()["desired"] == {"fan": "on"} and own_a2.headers["ETag"] == '"1"'
    assert own_a2.json()["metadata"]["desired"]["fan"]["version"] == 1
    assert again.json() == own_a2.json()
    for refused in (a_reads_b1, b_reads_a2, unknown, other_tenant_viewer):
        assert refused.status_code == 404
        assert "not found" in refused.json()["detail"]


async def test_the_twin_route_documents_its_parameter_and_security(stack: Stack) -> None:
    """It declares them itself (it resolves no FastAPI parameters): they must stay right."""
    spec = (await stack.ui.get("/openapi.json")).json()
    operation = spec["paths"]["/customer/devices/{device_id}/twin"]["get"]
    assert operation["security"] == [{"HTTPBearer": []}]
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
    }
    assert [(p["name"], p["in"], p["required"]) for p in operation["parameters"]] == [
        ("device_id", "path", True)
    ]
    assert {"200", "401", "404"} <= set(operation["responses"])
    assert (
        operation["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "object"
    )
