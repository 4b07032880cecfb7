"""``iotcloud user list|set-role|disable|delete`` and ``iotcloud tenant list|delete`` as a
script runs them, against a running stack that must see each change at once."""

from __future__ import annotations

import json
import os
from typing import Any

from tests.conftest import Stack
from tests.integration.test_cli import _broker_login, run
from tests.support import eventually


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


async def test_user_and_tenant_commands(stack: Stack) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": stack.settings.database_url,
        "MQTT_URL": stack.broker.url,
        "IOTCLOUD_JWT_SECRET": stack.settings.jwt_secret,
    }
    assert run(env, "tenant", "create", "acme").returncode == 0
    assert run(env, "tenant", "create", "other").returncode == 0
    for tenant, email, role in (
        ("acme", "boss@acme.test", "admin"),
        ("acme", "ops@acme.test", "operator"),
        ("other", "boss@other.test", "admin"),
    ):
        created = run(
            env,
            "user",
            "create",
            "--tenant",
            tenant,
            "--email",
            email,
            "--password",
            "a-long-password",
            "--role",
            role,
        )
        assert created.returncode == 0, created.stderr

    listed = run(env, "user", "list")
    assert listed.returncode == 0, listed.stderr
    assert [
        (u["tenant_id"], u["email"], u["role"], u["disabled"]) for u in lines(listed.stdout)
    ] == [
        ("acme", "boss@acme.test", "admin", False),
        ("acme", "ops@acme.test", "operator", False),
        ("other", "boss@other.test", "admin", False),
    ]
    assert [u["email"] for u in lines(run(env, "user", "list", "--tenant", "other").stdout)] == [
        "boss@other.test"
    ]

    ops_token = run(env, "token", "--email", "ops@acme.test").stdout.strip()
    ops = {"Authorization": f"Bearer {ops_token}"}
    assert (await stack.ui.get("/customer/devices", headers=ops)).status_code == 200

    demoted = run(env, "user", "set-role", "ops@acme.test", "viewer")
    assert demoted.returncode == 0 and lines(demoted.stdout)[0]["role"] == "viewer"

    async def demoted_in_service() -> bool:  # the token now carries the viewer role
        patch = await stack.ui.patch(
            "/customer/devices/x/twin/desired", json={"desired": {}}, headers=ops
        )
        return patch.status_code == 403

    await eventually(demoted_in_service, timeout=1.0, interval=0.02)

    assert run(env, "user", "disable", "ops@acme.test").returncode == 0

    async def refused() -> bool:
        return (await stack.ui.get("/customer/devices", headers=ops)).status_code == 401

    await eventually(refused, timeout=1.0, interval=0.02)
    assert "is disabled" in run(env, "token", "--email", "ops@acme.test").stderr
    assert run(env, "user", "disable", "--enable", "ops@acme.test").returncode == 0
    assert run(env, "user", "delete", "ops@acme.test").returncode == 0

    refusals = [
        (("user", "set-role", "boss@acme.test", "viewer"), "last enabled admin"),
        (("user", "disable", "boss@acme.test"), "last enabled admin"),
        (("user", "delete", "boss@acme.test"), "last enabled admin"),
        (("user", "delete", "ghost@acme.test"), "no user"),
        (("user", "list", "--tenant", "nope"), "no tenant"),
        (("tenant", "delete", "nope", "--yes"), "no tenant"),
        (("token", "--email", "boss@acme.test", "--ttl", "99999999"), "--ttl must be"),
    ]
    for args, message in refusals:
        result = run(env, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert [u["email"] for u in lines(run(env, "user", "list", "--tenant", "acme").stdout)] == [
        "boss@acme.test"
    ]

    device = json.loads(run(env, "device", "create", "--tenant", "acme", "--id", "acme-1").stdout)
    boss = {
        "Authorization": f"Bearer {run(env, 'token', '--email', 'boss@acme.test').stdout.strip()}"
    }
    assert _broker_login(stack.broker.port, "acme-1", device["provision_token"]) == 0
    tenants = lines(run(env, "tenant", "list").stdout)
    assert [(t["tenant_id"], t["users"], t["devices"]) for t in tenants] == [
        ("acme", 1, 1),
        ("other", 1, 0),
    ]

    # Every command that changed something is in the tenant's audit log, by the CLI.
    log = (await stack.ui.get("/customer/audit", headers=boss)).json()["items"]
    by_cli = [(e["action"], e["target"]) for e in log if e["actor"] == "iotcloud-cli"]
    assert by_cli == [
        ("auth.token_issued", "boss@acme.test"),
        ("device.create", "acme-1"),
        ("user.delete", "ops@acme.test"),
        ("user.enable", "ops@acme.test"),
        ("user.disable", "ops@acme.test"),
        ("user.set_role", "ops@acme.test"),
        ("auth.token_issued", "ops@acme.test"),
        ("user.create", "ops@acme.test"),
        ("user.create", "boss@acme.test"),
    ]

    # Without --yes nothing goes: the answer says what would.
    dry = run(env, "tenant", "delete", "acme")
    assert dry.returncode == 2 and "1 devices, 1 users" in dry.stderr and "--yes" in dry.stderr
    assert (await stack.ui.get("/customer/devices", headers=boss)).status_code == 200

    deleted = run(env, "tenant", "delete", "acme", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert lines(deleted.stdout) == [
        {"deleted": "acme", "removed": {"devices": 1, "users": 1, "models": 0, "bulk_jobs": 0}}
    ]
    assert [t["tenant_id"] for t in lines(run(env, "tenant", "list").stdout)] == ["other"]

    async def gone() -> bool:
        return (await stack.ui.get("/customer/devices", headers=boss)).status_code == 401

    await eventually(gone, timeout=1.0, interval=0.02)
    shadow = await stack.ingest.get(
        "/device/v1/shadow", headers={"X-Provision-Token": device["provision_token"]}
    )
    assert shadow.status_code == 401
    assert _broker_login(stack.broker.port, "acme-1", device["provision_token"]) != 0
    # The other tenant is untouched.
    assert [u["email"] for u in lines(run(env, "user", "list").stdout)] == ["boss@other.test"]
