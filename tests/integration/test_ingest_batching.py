"""Batched reports (shared.services.report_batches) leave exactly what single reports leave,
and the bridge really batches without losing a report or reordering a device's reports."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import orjson

from shared import db, twin
from shared.services.history import Actor
from shared.services.report_batches import IncomingReport, apply_reports
from shared.topics import reported_topic
from shared.twin import Limits
from tests.conftest import Stack
from tests.support import eventually

LIMITS = Limits(max_state_bytes=400, max_depth=4)
AT = datetime(2026, 1, 1, tzinfo=UTC)


def report(reported: Any, version: Any, token: str | None = None) -> bytes:
    body: dict[str, Any] = {"reported": reported, "version": version}
    if token is not None:
        body["clientToken"] = token
    return orjson.dumps(body)


# Every kind of report, in one device's delivery order: accepted, duplicate, deletes and
# nested merges, stale, unknown, not JSON, not an object, reported state too large, merged
# state too large, too deep, breaking the model's reported schema, and a late good one.
SEQUENCE = [
    report({"temp": 20, "net": {"ssid": "a", "ch": 1}}, 1, "first"),
    report({"temp": 20, "net": {"ssid": "a", "ch": 1}}, 1, "again"),
    report({"net": {"ssid": None, "band": {"ghz": 5}}, "list": [1, 2]}, 2),
    report({"temp": 19}, 1, "stale"),
    report({"temp": 18}, 9, "unknown"),
    b"{not json",
    report(["a list"], 2, "shape"),
    report({"blob": "x" * 500}, 2, "big"),
    report({"pad": "y" * 200}, 2),
    report({"pad2": "z" * 200}, 2, "merged-too-big"),
    report({"deep": {"a": {"b": {"c": {"d": 1}}}}}, 2, "deep"),
    report({"temp": "warm"}, 2, "schema"),
    report({"temp": 21, "list": None}, 2, "last"),
]


def apply_one_by_one(
    payloads: list[bytes], *, desired_version: int, schema: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], twin.Side, list[tuple[int, dict[str, Any]]], list[int]]:
    """The reference: each report on its own through the pure rules (``twin.parse_report``
    and ``twin.apply_report``), decoded here without the batch code. Returns the replies,
    the reported side they leave, the history entries (version, patch) oldest first and the
    schema violations counted per report."""
    side = twin.Side({}, {}, 0)
    replies: list[dict[str, Any]] = []
    history: list[tuple[int, dict[str, Any]]] = []
    violations: list[int] = []
    for payload in payloads:
        decoded: Any = None
        outcome: twin.Report | twin.Refusal | twin.Written
        if len(payload) > 4 * LIMITS.max_state_bytes:
            outcome = twin.Refusal(
                "too_large", f"payload is larger than {4 * LIMITS.max_state_bytes} bytes"
            )
        else:
            try:
                decoded = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                outcome = twin.Refusal("malformed", f"payload is not valid JSON: {exc}")
            else:
                outcome = twin.parse_report(decoded, LIMITS)
        token = decoded.get("clientToken") if isinstance(decoded, dict) else None
        if isinstance(outcome, twin.Report):
            outcome = twin.apply_report(
                side, desired_version, outcome, limits=LIMITS, at=AT, schema=schema
            )
        if isinstance(outcome, twin.Refusal):
            reply = {"accepted": False, "version": side.version, "error": outcome.message}
            violations.append(0)
        else:
            side = outcome.side
            history.append((outcome.history.version, outcome.history.patch))
            reply = {"accepted": True, "version": side.version}
            violations.append(len(outcome.schema_violations))
        if isinstance(token, str):
            reply["clientToken"] = token
        replies.append(reply)
    return replies, side, history, violations


def without_times(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_times(v) for k, v in node.items() if k != "updated_at"}
    return node


async def test_a_batch_leaves_what_single_reports_leave(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    created = await stack.ui.post(
        "/customer/models",
        json={
            "model_id": "thermo",
            "desired_schema": {"type": "object"},
            "reported_schema": {"type": "object", "properties": {"temp": {"type": "integer"}}},
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    for name in ("plain-batch", "model-batch"):
        await stack.device(admin, device_id=name)
        if name.startswith("model"):
            assigned = await stack.ui.patch(
                f"/customer/devices/{name}", json={"model_id": "thermo"}, headers=admin
            )
            assert assigned.status_code == 200, assigned.text
        for step in range(2):  # desired_version 2, so versions 1 and 2 are both reportable
            patched = await stack.ui.patch(
                f"/customer/devices/{name}/twin/desired",
                json={"desired": {"step": step}},
                headers=admin,
            )
            assert patched.status_code == 200, patched.text
    gone = await stack.device(admin, device_id="deleted-one")
    assert (
        await stack.ui.delete(f"/customer/devices/{gone['device_id']}", headers=admin)
    ).is_success

    pool = stack.ingest_app.state.pool
    reported_schema = {"type": "object", "properties": {"temp": {"type": "integer"}}}
    reference = {
        kind: apply_one_by_one(
            SEQUENCE, desired_version=2, schema=reported_schema if kind == "model" else None
        )
        for kind in ("plain", "model")
    }
    # The batch interleaves both devices' reports with reports on topics of no live device.
    batch: list[IncomingReport] = []
    for payload in SEQUENCE:
        batch.append(IncomingReport(tenant_id, "model-batch", payload))
        batch.append(IncomingReport(tenant_id, "plain-batch", payload))
    batch.insert(3, IncomingReport(tenant_id, "no-such-device", SEQUENCE[0]))
    batch.insert(7, IncomingReport(tenant_id, "deleted-one", SEQUENCE[0]))
    batch.insert(9, IncomingReport("other-tenant", "plain-batch", SEQUENCE[0]))
    async with db.transaction(pool) as conn:
        results = await apply_reports(conn, batch, limits=LIMITS, actor=Actor.device())

    by_device: dict[str, list[Any]] = {"plain-batch": [], "model-batch": []}
    foreign = 0
    for incoming, result in zip(batch, results, strict=True):
        if result.outcome == "foreign":
            assert result.reply is None
            foreign += 1
        else:
            by_device[incoming.device_id].append(result)
    assert foreign == 3
    for kind in ("plain", "model"):
        replies, side, entries, violations = reference[kind]
        batched = by_device[f"{kind}-batch"]
        assert [r.reply for r in batched] == replies, kind
        outcomes = [r.outcome for r in batched]
        assert outcomes == [
            "accepted",
            "accepted",
            "accepted",
            "version",
            "version",
            "malformed",
            "malformed",
            "too_large",
            "accepted",
            "too_large",
            "malformed",
            "accepted",
            "accepted",
        ], kind
        assert [r.schema_violations for r in batched] == violations, kind
        assert sum(violations) == (1 if kind == "model" else 0), kind

        document = (
            await stack.ui.get(f"/customer/devices/{kind}-batch/twin", headers=admin)
        ).json()
        assert document["reported"] == side.state, kind
        assert document["reported_version"] == side.version == 2, kind
        assert document["last_seen"] is not None
        assert without_times(document["metadata"]["reported"]) == without_times(side.metadata)
        assert document["reported_schema_errors"] == [], kind  # the last report fixed it
        history = (
            await stack.ui.get(
                f"/customer/devices/{kind}-batch/twin/history",
                params={"limit": 100},
                headers=admin,
            )
        ).json()["items"]
        reported_history = [
            (h["version"], h["patch"])
            for h in reversed(history)
            if h["kind"] == "reported" and h["actor"] == {"type": "device"}
        ]
        assert reported_history == entries, kind
        assert len(entries) == 6


async def test_a_batch_of_only_refused_reports_marks_seen_and_changes_nothing(
    stack: Stack,
) -> None:
    tenant_id, admin = await stack.tenant("admin")
    device = await stack.device(admin)
    device_id = device["device_id"]
    before = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert before["last_seen"] is None
    async with db.transaction(stack.ingest_app.state.pool) as conn:
        results = await apply_reports(
            conn,
            [IncomingReport(tenant_id, device_id, p) for p in (b"[]", report({"a": 1}, 5))],
            limits=LIMITS,
            actor=Actor.device(),
        )
    assert [r.outcome for r in results] == ["malformed", "version"]
    assert all(r.reply is not None and r.reply["version"] == 0 for r in results)
    after = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert after["last_seen"] is not None
    for key in ("reported", "reported_version", "shadow_updated_at", "metadata"):
        assert after[key] == before[key], key


async def test_the_bridge_batches_and_keeps_every_devices_order(stack: Stack) -> None:
    """A held row lock stalls one transaction while reports pile up behind it; they then go
    in batches (history rows of several devices share one transaction clock), none lost and
    each device's applied in the order it sent them."""
    tenant_id, admin = await stack.tenant("admin")
    devices = [await stack.device(admin) for _ in range(8)]
    per_device = 30
    url = stack.settings.database_url
    blocker = await db.connect(url, application_name="tests")
    try:
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute(
            "SELECT 1 FROM device_state WHERE device_id = $1 FOR UPDATE", devices[0]["device_id"]
        )

        async def send(device: dict[str, Any]) -> None:
            async with aiomqtt.Client(
                "127.0.0.1",
                stack.broker.port,
                username=device["device_id"],
                password=device["provision_token"],
                identifier=device["device_id"],
            ) as client:
                for n in range(1, per_device + 1):
                    await client.publish(
                        reported_topic(tenant_id, device["device_id"]),
                        orjson.dumps({"reported": {"n": n}, "version": 0}),
                        qos=1,
                    )

        await asyncio.gather(*(send(device) for device in devices))
        await holding.rollback()

        async def all_applied() -> bool:
            count = await blocker.fetchval(
                "SELECT count(*) FROM twin_history WHERE tenant_id = $1 AND kind = 'reported'",
                tenant_id,
            )
            return bool(count == len(devices) * per_device)

        await eventually(all_applied, timeout=30)
        rows = await blocker.fetch(
            """SELECT device_id, patch, at FROM twin_history
               WHERE tenant_id = $1 AND kind = 'reported' ORDER BY id""",
            tenant_id,
        )
    finally:
        await blocker.close()
    for device in devices:
        applied = [row["patch"]["n"] for row in rows if row["device_id"] == device["device_id"]]
        assert applied == list(range(1, per_device + 1))
    devices_per_transaction: dict[Any, set[str]] = {}
    for row in rows:
        devices_per_transaction.setdefault(row["at"], set()).add(row["device_id"])
    assert max(len(ids) for ids in devices_per_transaction.values()) > 1
    twins_now = [
        (await stack.ui.get(f"/customer/devices/{d['device_id']}/twin", headers=admin)).json()
        for d in devices
    ]
    assert all(t["reported"] == {"n": per_device} for t in twins_now)
