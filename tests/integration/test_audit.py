"""The audit log (SPEC §10): sign-ins and changes, in the transaction of the change, paged
and filtered, per tenant; retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shared import db
from shared.services import audit
from tests.conftest import Stack

PASSWORD = "a-long-enough-password"


async def entries(stack: Stack, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = await stack.ui.get("/customer/audit", params=params, headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_changes_and_sign_ins_are_audited(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    (me,) = (await stack.ui.get("/customer/users", headers=admin)).json()["items"]
    device = await stack.device(admin, device_id=f"a-{tenant_id}")
    device_id = device["device_id"]
    assert (
        await stack.ui.post(f"/customer/devices/{device_id}/provision-token", headers=admin)
    ).status_code == 200
    assert (
        await stack.ui.patch(f"/customer/devices/{device_id}", json={"name": "n"}, headers=admin)
    ).status_code == 200
    model = await stack.ui.post(
        "/customer/models",
        json={"model_id": "m1", "desired_schema": {"type": "object"}},
        headers=admin,
    )
    assert model.status_code == 201, model.text
    job = await stack.ui.post(
        "/customer/fleet/desired", json={"filter": {}, "desired": {"x": 1}}, headers=admin
    )
    assert job.status_code == 202
    created = await stack.ui.post(
        "/customer/users",
        json={"email": f"ops@{tenant_id}.test", "password": PASSWORD, "role": "operator"},
        headers=admin,
    )
    user_id = created.json()["user_id"]
    await stack.ui.patch(f"/customer/users/{user_id}", json={"role": "viewer"}, headers=admin)
    await stack.ui.patch(f"/customer/users/{user_id}", json={"disabled": True}, headers=admin)
    await stack.ui.delete(f"/customer/users/{user_id}", headers=admin)
    assert (
        await stack.ui.delete(f"/customer/devices/{device_id}", headers=admin)
    ).status_code == 204
    failed = await stack.ui.post(
        "/auth/token", data={"username": me["email"], "password": "wrong-password"}
    )
    assert failed.status_code == 401

    log = await entries(stack, admin)
    actions = [entry["action"] for entry in log]
    assert actions == [
        "auth.sign_in_failed",
        "device.delete",
        "user.delete",
        "user.disable",
        "user.set_role",
        "user.create",
        "bulk_job.create",
        "model.create",
        "device.update",
        "device.rotate_token",
        "device.create",
        "auth.sign_in",
    ]
    by_action = {entry["action"]: entry for entry in log}
    assert by_action["device.create"]["actor"] == me["email"]
    assert by_action["device.create"]["target"] == device_id
    assert by_action["device.create"]["ip"] == "127.0.0.1"
    assert by_action["user.set_role"]["detail"] == {"from": "operator", "to": "viewer"}
    assert by_action["bulk_job.create"]["target"] == job.json()["job_id"]
    assert by_action["auth.sign_in_failed"]["detail"] == {"reason": "wrong password"}
    assert by_action["auth.sign_in"]["ip"] == "127.0.0.1"
    assert set(log[0]) == {"id", "at", "actor", "action", "target", "detail", "ip"}

    # Filters: an exact action, an object's actions by prefix, an actor.
    assert [e["action"] for e in await entries(stack, admin, action="user.")] == [
        "user.delete",
        "user.disable",
        "user.set_role",
        "user.create",
    ]
    assert [e["target"] for e in await entries(stack, admin, action="device.create")] == [device_id]
    assert len(await entries(stack, admin, actor=me["email"])) == len(log)
    assert await entries(stack, admin, actor="nobody@else.test") == []

    # Paging: newest first, through `next`, nothing repeated or skipped.
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        page = (await stack.ui.get("/customer/audit", params=params, headers=admin)).json()
        seen += [entry["id"] for entry in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [entry["id"] for entry in log]


async def test_the_audit_log_is_the_tenants_and_the_admins(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    _other, other_admin = await stack.tenant("admin")
    _viewer_tenant, viewer = await stack.tenant("viewer", tenant_id=tenant_id)
    await stack.device(admin)
    others = await entries(stack, other_admin)
    assert [entry["action"] for entry in others] == ["auth.sign_in"]
    assert (await stack.ui.get("/customer/audit", headers=viewer)).status_code == 403
    for params in (
        {"limit": 0},
        {"limit": 10_000},
        {"cursor": "!!"},
        {"cursor": "bm90LWEtbnVtYmVy"},
        {"action": "x" * 200},
    ):
        response = await stack.ui.get("/customer/audit", params=params, headers=admin)
        assert response.status_code == 422, (params, response.text)


async def test_a_refused_change_leaves_no_entry(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    await stack.device(admin, device_id=f"d-{tenant_id}")
    before = await entries(stack, admin)
    duplicate = await stack.ui.post(
        "/customer/devices", json={"device_id": f"d-{tenant_id}"}, headers=admin
    )
    assert duplicate.status_code == 409
    (me,) = (await stack.ui.get("/customer/users", headers=admin)).json()["items"]
    last_admin = await stack.ui.patch(
        f"/customer/users/{me['user_id']}", json={"role": "viewer"}, headers=admin
    )
    assert last_admin.status_code == 409
    assert await entries(stack, admin) == before


async def test_retention_deletes_old_entries(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    pool = stack.ui_app.state.pool
    async with db.transaction(pool) as conn:
        await audit.record(conn, "iotcloud-cli", "device.create", "old", tenant_id=tenant_id)
        await conn.execute(
            "UPDATE audit_log SET at = now() - interval '400 days' WHERE target = 'old'"
        )
    assert await audit.purge_expired(pool, retention=timedelta(days=365)) == 1
    assert [entry["action"] for entry in await entries(stack, admin)] == ["auth.sign_in"]


async def test_certificates_and_rollouts_are_audited(stack: Stack) -> None:
    from shared import device_certs

    tenant_id, admin = await stack.tenant("admin")
    device_id = (await stack.device(admin, device_id=f"c-{tenant_id}"))["device_id"]
    _key, csr = device_certs.new_device_key_and_csr(device_id)
    issued = await stack.ui.post(
        f"/customer/devices/{device_id}/certificates", json={"csr": csr}, headers=admin
    )
    assert issued.status_code == 201, issued.text
    certificate_id = issued.json()["certificate_id"]
    revoked = await stack.ui.delete(
        f"/customer/devices/{device_id}/certificates/{certificate_id}", headers=admin
    )
    assert revoked.status_code == 204
    started = await stack.ui.post(
        "/customer/fleet/rollouts",
        json={
            "filter": {},
            "desired": {"fw": "2"},
            "stages": [100],
            "success": {"synced_ratio": 1, "within_s": 600},
            "on_failure": "pause",
        },
        headers=admin,
    )
    assert started.status_code == 202, started.text
    rollout_id = started.json()["rollout_id"]
    assert (
        await stack.ui.post(f"/customer/fleet/rollouts/{rollout_id}/abort", headers=admin)
    ).status_code == 200
    # A refused change leaves no entry: a second abort of an aborted rollout.
    again = await stack.ui.post(f"/customer/fleet/rollouts/{rollout_id}/abort", headers=admin)

    log = await entries(stack, admin)
    actions = [entry["action"] for entry in log if entry["action"].split(".")[0] != "auth"]
    expected = ["rollout.abort", "rollout.create", "certificate.revoke", "certificate.issue"]
    if again.status_code == 200:  # aborting twice is harmless, and then recorded twice
        expected.insert(0, "rollout.abort")
    assert actions[: len(expected)] == expected
    by_action = {entry["action"]: entry for entry in log}
    assert by_action["certificate.issue"]["target"] == device_id
    assert by_action["certificate.issue"]["detail"] == {"certificate_id": certificate_id}
    assert by_action["certificate.revoke"]["detail"] == {"certificate_id": certificate_id}
    assert by_action["rollout.create"]["target"] == rollout_id
    assert by_action["rollout.create"]["detail"]["keys"] == ["fw"]
    assert by_action["rollout.create"]["ip"] == "127.0.0.1"
