"""Issue 7 against the real stack: If-Match, per-leaf metadata, history, device models."""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import asyncpg
import orjson
from prometheus_client import REGISTRY

from shared import db
from shared.services import history
from shared.topics import reported_topic
from tests.conftest import Stack
from tests.support import eventually, with_database

THERMOSTAT = {
    "type": "object",
    "properties": {
        "interval_s": {"type": "integer", "minimum": 1},
        "mode": {"enum": ["eco", "comfort"]},
        "net": {"type": "object", "properties": {"ssid": {"type": "string"}}},
    },
    "required": ["interval_s"],
}
REPORTED = {"type": "object", "properties": {"temp": {"type": "number"}}}


class Fleet:
    """One tenant with an admin, an operator and a viewer, and helpers for its twins."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.tenant_id = ""
        self.admin: dict[str, str] = {}
        self.operator: dict[str, str] = {}
        self.viewer: dict[str, str] = {}

    async def start(self) -> Fleet:
        self.tenant_id, self.admin = await self.stack.tenant("admin")
        _, self.operator = await self.stack.tenant("operator", self.tenant_id)
        _, self.viewer = await self.stack.tenant("viewer", self.tenant_id)
        return self

    async def device(self) -> tuple[str, dict[str, str]]:
        created = await self.stack.device(self.admin)
        return created["device_id"], {"X-Provision-Token": created["provision_token"]}

    async def twin(self, device_id: str) -> Any:
        response = await self.stack.ui.get(
            f"/customer/devices/{device_id}/twin", headers=self.admin
        )
        assert response.status_code == 200, response.text
        return response

    async def patch(
        self, device_id: str, desired: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Any:
        return await self.stack.ui.patch(
            f"/customer/devices/{device_id}/twin/desired",
            json={"desired": desired},
            headers=headers or self.operator,
        )

    async def history(self, device_id: str, **params: Any) -> Any:
        return await self.stack.ui.get(
            f"/customer/devices/{device_id}/twin/history", params=params, headers=self.viewer
        )

    async def report(self, device: dict[str, str], reported: dict[str, Any], version: int) -> Any:
        return await self.stack.ingest.post(
            "/device/v1/shadow/reported",
            json={"reported": reported, "version": version},
            headers=device,
        )

    async def model(self, model_id: str, desired_schema: Any, **extra: Any) -> Any:
        return await self.stack.ui.post(
            "/customer/models",
            json={"model_id": model_id, "desired_schema": desired_schema, **extra},
            headers=self.admin,
        )

    async def set_device(self, device_id: str, body: dict[str, Any]) -> Any:
        return await self.stack.ui.patch(
            f"/customer/devices/{device_id}", json=body, headers=self.admin
        )


async def _fleet(stack: Stack) -> Fleet:
    return await Fleet(stack).start()


def _stamp_of(metadata: dict[str, Any], *path: str) -> tuple[int, datetime]:
    node: Any = metadata
    for key in path:
        node = node[key]
    assert set(node) == {"updated_at", "version"}, node
    return node["version"], datetime.fromisoformat(node["updated_at"])


# --- 1. optimistic concurrency -------------------------------------------------------------


async def test_etag_and_if_match(stack: Stack) -> None:
    fleet = await _fleet(stack)
    device_id, _ = await fleet.device()
    url = f"/customer/devices/{device_id}/twin/desired"
    assert (await fleet.twin(device_id)).headers["ETag"] == '"0"'

    ok = await stack.ui.patch(
        url, json={"desired": {"a": 1}}, headers={**fleet.operator, "If-Match": '"0"'}
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["ETag"] == '"1"'

    stale = await stack.ui.patch(
        url, json={"desired": {"a": 2}}, headers={**fleet.operator, "If-Match": '"0"'}
    )
    assert stale.status_code == 412
    assert "desired_version is 1" in stale.json()["detail"]

    for malformed in ("abc", '"1", "2"', '"-1"', '"99999999999999999999999"'):
        bad = await stack.ui.patch(
            url, json={"desired": {"a": 3}}, headers={**fleet.operator, "If-Match": malformed}
        )
        assert bad.status_code == 412, (malformed, bad.text)
        assert "If-Match must be one entity tag" in bad.json()["detail"]

    twin = (await fleet.twin(device_id)).json()
    assert (twin["desired"], twin["desired_version"]) == ({"a": 1}, 1)
    assert twin["metadata"]["desired"]["a"]["version"] == 1
    assert len((await fleet.history(device_id)).json()["items"]) == 1

    anything = await stack.ui.patch(
        url, json={"desired": {"a": 4}}, headers={**fleet.operator, "If-Match": "*"}
    )
    assert (anything.status_code, anything.json()["desired_version"]) == (200, 2)
    weak = await stack.ui.patch(
        url, json={"desired": {"a": 5}}, headers={**fleet.operator, "If-Match": 'W/"2"'}
    )
    assert weak.status_code == 200


async def test_two_operators_racing_on_the_same_etag(stack: Stack) -> None:
    fleet = await _fleet(stack)
    _, second_operator = await stack.tenant("operator", fleet.tenant_id)
    device_id, _ = await fleet.device()
    url = f"/customer/devices/{device_id}/twin/desired"
    for round_ in range(5):
        etag = (await fleet.twin(device_id)).headers["ETag"]
        first, second = await asyncio.gather(
            stack.ui.patch(
                url,
                json={"desired": {"who": "first", "round": round_}},
                headers={**fleet.operator, "If-Match": etag},
            ),
            stack.ui.patch(
                url,
                json={"desired": {"who": "second", "round": round_}},
                headers={**second_operator, "If-Match": etag},
            ),
        )
        assert sorted([first.status_code, second.status_code]) == [200, 412], (first, second)
        winner = first if first.status_code == 200 else second
        twin = (await fleet.twin(device_id)).json()
        assert twin["desired"] == winner.json()["desired"]
        assert twin["desired_version"] == round_ + 1
    items = (await fleet.history(device_id)).json()["items"]
    assert [item["version"] for item in items] == [5, 4, 3, 2, 1]


# --- 2. per-leaf metadata ------------------------------------------------------------------


async def test_metadata_mirrors_desired_and_reported(stack: Stack) -> None:
    fleet = await _fleet(stack)
    device_id, device = await fleet.device()

    first = await fleet.patch(device_id, {"a": 1, "net": {"ssid": "x", "dns": ["1.1.1.1"]}})
    assert first.status_code == 200
    metadata = first.json()["metadata"]
    assert set(metadata) == {"desired", "reported"}
    assert metadata["reported"] == {}
    assert set(metadata["desired"]) == {"a", "net"}
    assert set(metadata["desired"]["net"]) == {"ssid", "dns"}
    version, at = _stamp_of(metadata["desired"], "a")
    assert version == 1 and at.tzinfo is not None
    assert abs(datetime.now(UTC) - at) < timedelta(minutes=1)

    second = (await fleet.patch(device_id, {"net": {"ssid": None}, "b": [1]})).json()
    desired_meta = second["metadata"]["desired"]
    assert second["desired"] == {"a": 1, "net": {"dns": ["1.1.1.1"]}, "b": [1]}
    assert _stamp_of(desired_meta, "a")[0] == 1
    assert _stamp_of(desired_meta, "net", "dns")[0] == 1
    assert "ssid" not in desired_meta["net"]
    assert _stamp_of(desired_meta, "b")[0] == 2

    third = (await fleet.patch(device_id, {"net": None, "a": None})).json()
    assert third["desired"] == {"b": [1]}
    assert set(third["metadata"]["desired"]) == {"b"}

    report = await fleet.report(device, {"temp": 21.5, "fw": {"v": "1.2"}}, 3)
    assert report.status_code == 200
    twin = (await fleet.twin(device_id)).json()
    assert twin["metadata"]["desired"] == third["metadata"]["desired"]
    assert _stamp_of(twin["metadata"]["reported"], "temp")[0] == 3
    assert _stamp_of(twin["metadata"]["reported"], "fw", "v")[0] == 3
    assert twin["metadata"]["reported"]["temp"]["updated_at"] == twin["shadow_updated_at"]


async def test_refused_writes_leave_metadata_alone(stack: Stack) -> None:
    fleet = await _fleet(stack)
    device_id, device = await fleet.device()
    await fleet.patch(device_id, {"a": 1})
    before = (await fleet.twin(device_id)).json()
    too_deep: dict[str, Any] = {}
    node = too_deep
    for _ in range(20):
        node["x"] = {}
        node = node["x"]
    assert (await fleet.patch(device_id, {"a": too_deep})).status_code == 422
    assert (await fleet.report(device, {"a": 2}, 7)).status_code == 409
    after = (await fleet.twin(device_id)).json()
    assert after["metadata"] == before["metadata"]
    assert after["desired_version"] == before["desired_version"]


# --- 3. history ----------------------------------------------------------------------------


async def test_history_records_writes_with_actors_newest_first(stack: Stack) -> None:
    fleet = await _fleet(stack)
    device_id, device = await fleet.device()
    await fleet.patch(device_id, {"interval": 30})
    await fleet.patch(device_id, {"interval": 60, "mode": "eco"}, headers=fleet.admin)
    assert (await fleet.report(device, {"interval": 60}, 2)).status_code == 200
    assert (await fleet.report(device, {"x": 1}, 1)).status_code == 409  # stale: not recorded

    page = await fleet.history(device_id)
    assert page.status_code == 200
    body = page.json()
    assert body["next"] is None
    items = body["items"]
    assert [(item["kind"], item["version"]) for item in items] == [
        ("reported", 2),
        ("desired", 2),
        ("desired", 1),
    ]
    for item in items:
        assert set(item) == {"id", "at", "kind", "actor", "version", "patch"}
        datetime.fromisoformat(item["at"])
    assert items[0]["actor"] == {"type": "device"}
    assert items[0]["patch"] == {"interval": 60}
    assert items[1]["actor"]["type"] == "user"
    assert items[1]["actor"]["email"].startswith("admin-")
    assert items[2]["actor"]["email"].startswith("operator-")
    assert items[1]["patch"] == {"interval": 60, "mode": "eco"}
    assert items[0]["id"] > items[1]["id"] > items[2]["id"]


async def test_history_pages_with_a_cursor(stack: Stack) -> None:
    fleet = await _fleet(stack)
    device_id, _ = await fleet.device()
    for n in range(5):
        await fleet.patch(device_id, {"n": n})
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = (await fleet.history(device_id, **params)).json()
        seen += [item["version"] for item in body["items"]]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == [5, 4, 3, 2, 1]
    assert pages == 3

    for bad in ({"cursor": "abc"}, {"cursor": "-1"}, {"limit": 0}, {"limit": 501}):
        assert (await fleet.history(device_id, **bad)).status_code == 422, bad


async def test_history_access_rules(stack: Stack) -> None:
    fleet = await _fleet(stack)
    device_id, _ = await fleet.device()
    _, stranger = await stack.tenant("admin")
    url = f"/customer/devices/{device_id}/twin/history"
    assert (await stack.ui.get(url, headers=stranger)).status_code == 404
    assert (await stack.ui.get(url)).status_code == 401
    for impossible in ("a%00b", "a%20b", "x" * 200):
        for method in ("GET", "PATCH"):
            suffix = "/twin/history" if method == "GET" else ""
            response = await stack.ui.request(
                method,
                f"/customer/devices/{impossible}{suffix}",
                headers=fleet.admin,
                json={"name": "x"} if method == "PATCH" else None,
            )
            assert response.status_code == 404, (impossible, method)
    assert (await stack.ui.get("/customer/devices/a%00b/twin")).status_code == 401
    assert (
        await stack.ui.get("/customer/devices/nope/twin/history", headers=fleet.viewer)
    ).status_code == 404
    assert (await fleet.patch(device_id, {"a": 1}, headers=fleet.viewer)).status_code == 403
    assert (
        await stack.ui.delete(f"/customer/devices/{device_id}", headers=fleet.admin)
    ).status_code == 204
    assert (await stack.ui.get(url, headers=fleet.viewer)).status_code == 404


async def test_history_has_no_gaps_under_fifty_concurrent_writers(stack: Stack) -> None:
    fleet = await _fleet(stack)
    device_id, _ = await fleet.device()
    responses = await asyncio.gather(*(fleet.patch(device_id, {f"k{n}": n}) for n in range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    versions: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 20, **({"cursor": cursor} if cursor else {})}
        body = (await fleet.history(device_id, **params)).json()
        versions += [item["version"] for item in body["items"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert versions == list(range(50, 0, -1))
    # Each item's patch is the one that produced that version.
    by_version = {r.json()["desired_version"]: r for r in responses}
    body = (await fleet.history(device_id, limit=50)).json()
    for item in body["items"]:
        request_body = orjson.loads(by_version[item["version"]].request.content)
        assert item["patch"] == request_body["desired"]


async def test_mqtt_reports_are_recorded_too(stack: Stack) -> None:
    fleet = await _fleet(stack)
    created = await stack.device(fleet.admin)
    device_id, token = created["device_id"], created["provision_token"]
    await fleet.patch(device_id, {"interval": 5})
    async with aiomqtt.Client(
        "127.0.0.1", stack.broker.port, username=device_id, password=token, identifier=device_id
    ) as client:
        await client.publish(
            reported_topic(fleet.tenant_id, device_id),
            orjson.dumps({"reported": {"interval": 5}, "version": 1}),
            qos=1,
        )

        async def recorded() -> list[Any]:
            items = (await fleet.history(device_id)).json()["items"]
            return [item for item in items if item["kind"] == "reported"]

        reported = await eventually(recorded)
    assert reported[0]["actor"] == {"type": "device"}
    assert (reported[0]["version"], reported[0]["patch"]) == (1, {"interval": 5})
    twin = (await fleet.twin(device_id)).json()
    assert _stamp_of(twin["metadata"]["reported"], "interval")[0] == 1


async def test_retention_purges_old_history_in_batches(stack: Stack) -> None:
    fleet = await _fleet(stack)
    device_id, _ = await fleet.device()
    for n in range(7):
        await fleet.patch(device_id, {"n": n})
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        await conn.execute(
            """UPDATE twin_history SET at = now() - interval '40 days'
               WHERE device_id = $1 AND version <= 5""",
            device_id,
        )
    finally:
        await conn.close()
    pool = await db.create_pool(stack.settings.database_url, application_name="tests")
    try:
        deleted = await history.purge_expired(pool, retention=timedelta(days=30), batch_size=2)
        assert deleted == 5
        assert await history.purge_expired(pool, retention=timedelta(days=30)) == 0
        # Everything is older than a retention of zero days from a moment in the future.
        future = datetime.now(UTC) + timedelta(minutes=1)
        assert await history.purge_expired(pool, retention=timedelta(0), now=future) == 2
    finally:
        await pool.close()
    assert (await fleet.history(device_id)).json()["items"] == []


# --- 4. device models ----------------------------------------------------------------------


async def test_models_create_list_get_and_roles(stack: Stack) -> None:
    fleet = await _fleet(stack)
    created = await fleet.model("thermo", THERMOSTAT, reported_schema=REPORTED)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["model_id"] == "thermo"
    assert body["desired_schema"] == THERMOSTAT and body["reported_schema"] == REPORTED
    assert (await fleet.model("plain", {"type": "object"})).status_code == 201

    listed = await stack.ui.get("/customer/models", headers=fleet.viewer)
    assert listed.status_code == 200
    assert [m["model_id"] for m in listed.json()["items"]] == ["plain", "thermo"]
    first = (
        await stack.ui.get("/customer/models", params={"limit": 1}, headers=fleet.viewer)
    ).json()
    assert [m["model_id"] for m in first["items"]] == ["plain"] and first["next"] == "plain"
    rest = await stack.ui.get(
        "/customer/models", params={"limit": 1, "cursor": first["next"]}, headers=fleet.viewer
    )
    assert [m["model_id"] for m in rest.json()["items"]] == ["thermo"]

    one = await stack.ui.get("/customer/models/thermo", headers=fleet.viewer)
    assert one.status_code == 200
    assert (one.json()["device_count"], one.json()["reported_schema"]) == (0, REPORTED)
    assert (await stack.ui.get("/customer/models/plain", headers=fleet.viewer)).json()[
        "reported_schema"
    ] is None

    assert (await fleet.model("thermo", THERMOSTAT)).status_code == 409
    for role in (fleet.viewer, fleet.operator):
        denied = await stack.ui.post(
            "/customer/models", json={"model_id": "m2", "desired_schema": {}}, headers=role
        )
        assert denied.status_code == 403
    assert (await stack.ui.get("/customer/models/missing", headers=fleet.viewer)).status_code == 404
    assert (await stack.ui.get("/customer/models")).status_code == 401

    _, stranger = await stack.tenant("admin")
    assert (await stack.ui.get("/customer/models/thermo", headers=stranger)).status_code == 404
    assert (await stack.ui.get("/customer/models", headers=stranger)).json()["items"] == []
    # Model ids are per tenant: another tenant may use the same one.
    again = await stack.ui.post(
        "/customer/models", json={"model_id": "thermo", "desired_schema": {}}, headers=stranger
    )
    assert again.status_code == 201


async def test_bad_models_are_422_naming_the_place(stack: Stack) -> None:
    fleet = await _fleet(stack)
    bad_type = await fleet.model("m1", {"type": "thing"})
    assert bad_type.status_code == 422
    errors = bad_type.json()["detail"]["errors"]
    assert errors[0]["pointer"] == "/desired_schema/type"
    bad_reported = await fleet.model(
        "m1", {}, reported_schema={"properties": {"t": {"minimum": "0"}}}
    )
    assert bad_reported.status_code == 422
    assert bad_reported.json()["detail"]["errors"][0]["pointer"] == (
        "/reported_schema/properties/t/minimum"
    )
    bad_pattern = await fleet.model("m1", {"properties": {"s": {"pattern": "("}}})
    assert bad_pattern.json()["detail"]["errors"][0]["rule"] == "format"
    remote = await fleet.model("m1", {"$ref": "https://example.com/schema.json"})
    assert remote.status_code == 422
    assert remote.json()["detail"]["errors"][0]["rule"] == "$ref"

    for body in (
        {"model_id": "bad id", "desired_schema": {}},
        {"model_id": "m1", "desired_schema": [1]},
        {"model_id": "m1"},
        {"model_id": "m1", "desired_schema": {}, "surprise": 1},
    ):
        response = await stack.ui.post("/customer/models", json=body, headers=fleet.admin)
        assert response.status_code == 422, body
    garbage = await stack.ui.post(
        "/customer/models",
        content=b"{not json",
        headers={**fleet.admin, "Content-Type": "application/json"},
    )
    assert garbage.status_code == 422
    assert (await stack.ui.get("/customer/models/m1", headers=fleet.viewer)).status_code == 404
    assert (
        await stack.ui.get("/customer/models", params={"cursor": "a b"}, headers=fleet.viewer)
    ).status_code == 422


async def test_desired_writes_are_checked_against_the_model(stack: Stack) -> None:
    fleet = await _fleet(stack)
    device_id, _ = await fleet.device()
    assert (await fleet.model("thermo", THERMOSTAT)).status_code == 201

    # The current desired ({}) lacks interval_s: attaching the model is refused.
    refused = await fleet.set_device(device_id, {"model_id": "thermo"})
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert detail["model_id"] == "thermo"
    assert detail["errors"] == [
        {"pointer": "", "rule": "required", "message": "'interval_s' is a required property"}
    ]
    assert (await stack.ui.get(f"/customer/devices/{device_id}", headers=fleet.viewer)).json()[
        "model_id"
    ] is None

    assert (
        await fleet.patch(device_id, {"interval_s": 10, "net": {"ssid": "a"}})
    ).status_code == 200
    attached = await fleet.set_device(device_id, {"model_id": "thermo"})
    assert attached.status_code == 200, attached.text
    assert attached.json()["model_id"] == "thermo"
    assert (await fleet.twin(device_id)).json()["model_id"] == "thermo"

    before = (await fleet.twin(device_id)).json()
    for patch, pointer, rule in (
        ({"interval_s": 0}, "/interval_s", "minimum"),
        ({"mode": "turbo"}, "/mode", "enum"),
        ({"net": {"ssid": 5}}, "/net/ssid", "type"),
        ({"interval_s": None}, "", "required"),
    ):
        response = await fleet.patch(device_id, patch)
        assert response.status_code == 422, patch
        errors = response.json()["detail"]["errors"]
        assert (errors[0]["pointer"], errors[0]["rule"]) == (pointer, rule), errors
        assert errors[0]["message"]
    after = (await fleet.twin(device_id)).json()
    assert after["desired"] == before["desired"]
    assert after["desired_version"] == before["desired_version"]
    assert after["metadata"] == before["metadata"]
    assert len((await fleet.history(device_id)).json()["items"]) == 1

    fine = await fleet.patch(device_id, {"mode": "eco", "interval_s": 20})
    assert fine.status_code == 200 and fine.json()["desired_version"] == 2

    detached = await fleet.set_device(device_id, {"model_id": None})
    assert (detached.status_code, detached.json()["model_id"]) == (200, None)
    assert (await fleet.patch(device_id, {"interval_s": 0})).status_code == 200


async def test_reports_breaking_the_model_are_accepted_and_flagged(stack: Stack) -> None:
    fleet = await _fleet(stack)
    device_id, device = await fleet.device()
    assert (await fleet.model("thermo", {}, reported_schema=REPORTED)).status_code == 201
    assert (await fleet.set_device(device_id, {"model_id": "thermo"})).status_code == 200
    counted_before = (
        REGISTRY.get_sample_value(
            "iotcloud_reported_schema_violations_total", {"transport": "http"}
        )
        or 0.0
    )

    good = await fleet.report(device, {"temp": 20.5}, 0)
    assert (good.status_code, good.json()) == (200, {"accepted": True, "version": 0})
    assert (await fleet.twin(device_id)).json()["reported_schema_errors"] == []

    bad = await fleet.report(device, {"temp": "hot"}, 0)
    assert (bad.status_code, bad.json()) == (200, {"accepted": True, "version": 0})
    twin = (await fleet.twin(device_id)).json()
    assert twin["reported"] == {"temp": "hot"}
    assert [(e["pointer"], e["rule"]) for e in twin["reported_schema_errors"]] == [
        ("/temp", "type")
    ]
    counted_after = REGISTRY.get_sample_value(
        "iotcloud_reported_schema_violations_total", {"transport": "http"}
    )
    assert counted_after == counted_before + 1

    assert (await fleet.report(device, {"temp": 19}, 0)).status_code == 200
    assert (await fleet.twin(device_id)).json()["reported_schema_errors"] == []


async def _revalidated(
    stack: Stack, headers: dict[str, str], model_id: str, job_id: str
) -> dict[str, Any]:
    """The model change's job once it has finished (it runs in the background)."""
    url = f"/customer/models/{model_id}/revalidations/{job_id}"
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        job: dict[str, Any] = (await stack.ui.get(url, headers=headers)).json()
        if job["status"] != "running" or asyncio.get_running_loop().time() > deadline:
            return job
        await asyncio.sleep(0.05)


async def test_changing_a_model_is_refused_if_devices_would_break(stack: Stack) -> None:
    fleet = await _fleet(stack)
    assert (await fleet.model("thermo", THERMOSTAT)).status_code == 201
    devices = []
    for interval in (5, 50, 500):
        device_id, _ = await fleet.device()
        await fleet.patch(device_id, {"interval_s": interval})
        assert (await fleet.set_device(device_id, {"model_id": "thermo"})).status_code == 200
        devices.append(device_id)
    assert (await stack.ui.get("/customer/models/thermo", headers=fleet.viewer)).json()[
        "device_count"
    ] == 3

    stricter = {**THERMOSTAT, "properties": {"interval_s": {"type": "integer", "maximum": 60}}}
    queued = await stack.ui.put(
        "/customer/models/thermo", json={"desired_schema": stricter}, headers=fleet.admin
    )
    assert queued.status_code == 202, queued.text
    assert (queued.json()["status"], queued.json()["total"]) == ("running", 3)
    detail = await _revalidated(stack, fleet.viewer, "thermo", queued.json()["job_id"])
    assert (detail["status"], detail["checked"]) == ("refused", 3)
    assert detail["invalid_count"] == 1
    assert [d["device_id"] for d in detail["devices"]] == [devices[2]]
    assert detail["devices"][0]["errors"][0]["pointer"] == "/interval_s"
    assert (await stack.ui.get("/customer/models/thermo", headers=fleet.viewer)).json()[
        "desired_schema"
    ] == THERMOSTAT

    looser = {**THERMOSTAT, "properties": {"interval_s": {"type": "integer", "maximum": 600}}}
    queued = await stack.ui.put(
        "/customer/models/thermo",
        json={"desired_schema": looser, "reported_schema": REPORTED},
        headers=fleet.admin,
    )
    assert queued.status_code == 202, queued.text
    applied = await _revalidated(stack, fleet.viewer, "thermo", queued.json()["job_id"])
    assert applied["status"] == "applied", applied
    changed = await stack.ui.get("/customer/models/thermo", headers=fleet.viewer)
    assert changed.json()["desired_schema"] == looser
    assert changed.json()["reported_schema"] == REPORTED
    assert (await fleet.patch(devices[0], {"interval_s": 601})).json()["detail"]["errors"][0][
        "rule"
    ] == "maximum"

    assert (
        await stack.ui.put(
            "/customer/models/nope", json={"desired_schema": {}}, headers=fleet.admin
        )
    ).status_code == 404
    assert (
        await stack.ui.put(
            "/customer/models/thermo", json={"desired_schema": {}}, headers=fleet.operator
        )
    ).status_code == 403
    bad = await stack.ui.put(
        "/customer/models/thermo", json={"desired_schema": {"type": 1}}, headers=fleet.admin
    )
    assert bad.status_code == 422


async def test_device_patch_name_tags_and_model_errors(stack: Stack) -> None:
    fleet = await _fleet(stack)
    device_id, _ = await fleet.device()
    url = f"/customer/devices/{device_id}"

    renamed = await fleet.set_device(
        device_id, {"name": "boiler", "tags": {"site": "a", "floor": "2"}}
    )
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["tags"]) == (
        "boiler",
        {"site": "a", "floor": "2"},
    )
    merged = await fleet.set_device(device_id, {"tags": {"floor": None, "room": "7"}})
    assert merged.json()["tags"] == {"site": "a", "room": "7"}
    assert merged.json()["name"] == "boiler"
    assert (await stack.ui.get(url, headers=fleet.viewer)).json()["tags"] == {
        "site": "a",
        "room": "7",
    }

    for body in (
        {"tags": {"a:b": "x"}},
        {"tags": {"": "x"}},
        {"tags": {"k": 5}},
        {"tags": {"k": "v" * 257}},
        {"tags": ["x"]},
        {"name": ""},
        {"name": None},
        {"model_id": "bad id"},
        {"model_id": "missing"},
        {"colour": "red"},
    ):
        response = await fleet.set_device(device_id, body)
        assert response.status_code == 422, (body, response.text)
    too_many = {f"t{n}": "x" for n in range(63)}
    assert (await fleet.set_device(device_id, {"tags": too_many})).status_code == 422
    assert (await stack.ui.get(url, headers=fleet.viewer)).json()["tags"] == {
        "site": "a",
        "room": "7",
    }

    assert (
        await stack.ui.patch(url, json={"name": "x"}, headers=fleet.operator)
    ).status_code == 403
    assert (await stack.ui.patch(url, json={"name": "x"}, headers=fleet.viewer)).status_code == 403
    _, stranger = await stack.tenant("admin")
    assert (await stack.ui.patch(url, json={"name": "x"}, headers=stranger)).status_code == 404
    assert (
        await stack.ui.patch("/customer/devices/missing", json={"name": "x"}, headers=fleet.admin)
    ).status_code == 404

    # Another tenant's model id is unknown here, even when it exists there.
    await stack.ui.post(
        "/customer/models", json={"model_id": "theirs", "desired_schema": {}}, headers=stranger
    )
    assert (await fleet.set_device(device_id, {"model_id": "theirs"})).status_code == 422


async def test_ui_runs_the_retention_task(stack: Stack) -> None:
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert "history-retention" in names


async def test_migration_004_gives_existing_state_metadata(
    pg_server: str, tmp_path: pathlib.Path
) -> None:
    """A database that already holds twins before 004 gets metadata mirroring them."""
    before_004 = tmp_path / "migrations"
    before_004.mkdir()
    for _, _, path in db.migration_files():
        if path.name < "004":
            shutil.copy(path, before_004 / path.name)
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(with_database(pg_server, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await db.connect(with_database(pg_server, name), application_name="tests")
        try:
            await db.migrate(conn, before_004)
            await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('t1', 't1')")
            for device_id in ("d1", "d2"):
                await conn.execute(
                    """INSERT INTO devices (device_id, tenant_id, token_hash, broker_salt,
                                            broker_hash)
                       VALUES ($1, 't1', $2, 's', 'h')""",
                    device_id,
                    device_id.encode(),
                )
            await conn.execute(
                """INSERT INTO device_state (device_id, tenant_id, desired_state, desired_version,
                                             reported_state, reported_version)
                   VALUES ('d1', 't1', $1, 4, $2, 3), ('d2', 't1', '{}', 0, '{}', 0)""",
                {"a": 1, "net": {"ssid": "x", "empty": {}}, "l": [1]},
                {"a": 1},
            )
            await db.migrate(conn)
            rows = {
                row["device_id"]: row
                for row in await conn.fetch(
                    "SELECT device_id, desired_metadata, reported_metadata, shadow_updated_at "
                    "FROM device_state"
                )
            }
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    d1 = rows["d1"]
    stamp = {"updated_at": d1["shadow_updated_at"].isoformat(), "version": 4}
    assert d1["desired_metadata"] == {
        "a": stamp,
        "net": {"ssid": stamp, "empty": stamp},
        "l": stamp,
    }
    assert d1["reported_metadata"] == {"a": {**stamp, "version": 3}}
    assert (rows["d2"]["desired_metadata"], rows["d2"]["reported_metadata"]) == ({}, {})
