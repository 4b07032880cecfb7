"""Operator auth, roles, tenant isolation and the device registry (issue: foundation)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import asyncpg
import jwt
import pytest

from shared.settings import Settings, SettingsError
from tests.conftest import Stack
from tests.support import ROOT, free_port


async def test_login_and_bad_credentials(stack: Stack) -> None:
    _tenant_id, headers = await stack.tenant("viewer")
    assert (await stack.ui.get("/customer/devices", headers=headers)).status_code == 200
    bad = await stack.ui.post(
        "/auth/token", data={"username": "nobody@x.test", "password": "nope-nope"}
    )
    assert bad.status_code == 401
    assert bad.json() == {"detail": "incorrect e-mail or password"}
    missing = await stack.ui.post("/auth/token", data={"username": "a@b.c"})
    assert missing.status_code == 422
    # A JSON body, the usual first try, is told what to send instead.
    as_json = await stack.ui.post(
        "/auth/token", json={"username": "nobody@x.test", "password": "nope-nope"}
    )
    assert as_json.status_code == 422
    assert (
        "form fields" in as_json.json()["detail"] and "not a JSON body" in as_json.json()["detail"]
    )
    documented = (await stack.ui.get("/openapi.json")).json()["paths"]["/auth/token"]["post"]
    assert "form fields" in documented["description"]
    assert "application/x-www-form-urlencoded" in documented["requestBody"]["content"]


async def test_tokens_are_validated_strictly(stack: Stack) -> None:
    _tenant_id, headers = await stack.tenant("admin")
    good = headers["Authorization"].split()[1]
    claims = jwt.decode(good, options={"verify_signature": False})
    secret = stack.settings.jwt_secret
    forged = {
        "missing": None,
        "garbage": "not.a.token",
        "alg none": jwt.encode(claims, key=None, algorithm="none"),
        "wrong key": jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256"),
        "expired": jwt.encode({**claims, "exp": int(time.time()) - 10}, secret, algorithm="HS256"),
        "no exp": jwt.encode(
            {k: v for k, v in claims.items() if k != "exp"}, secret, algorithm="HS256"
        ),
        "bad role": jwt.encode({**claims, "role": "root"}, secret, algorithm="HS256"),
        "HS512": jwt.encode(claims, secret, algorithm="HS512"),
    }
    device_id = (await stack.device(headers))["device_id"]
    urls = ("/customer/devices", f"/customer/devices/{device_id}/twin")
    # The good token is verified once and then cached: none of the others rides on it.
    for url in urls:
        assert (await stack.ui.get(url, headers=headers)).status_code == 200
    for name, token in forged.items():
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        for url in urls:
            response = await stack.ui.get(url, headers=auth)
            assert response.status_code == 401, (name, url)
            assert "Traceback" not in response.text
    for url in urls:
        assert (await stack.ui.get(url, headers=headers)).status_code == 200


async def test_roles_are_enforced(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    _, viewer = await stack.tenant("viewer", tenant_id=tenant_id)
    _, operator = await stack.tenant("operator", tenant_id=tenant_id)
    device = await stack.device(admin)
    device_id = device["device_id"]
    patch = {"desired": {"fan": "on"}}
    url = f"/customer/devices/{device_id}"

    assert (await stack.ui.post("/customer/devices", json={}, headers=viewer)).status_code == 403
    assert (await stack.ui.post("/customer/devices", json={}, headers=operator)).status_code == 403
    assert (
        await stack.ui.patch(f"{url}/twin/desired", json=patch, headers=viewer)
    ).status_code == 403
    assert (await stack.ui.delete(url, headers=operator)).status_code == 403
    assert (await stack.ui.post(f"{url}/provision-token", headers=viewer)).status_code == 403
    assert (await stack.ui.get(f"{url}/twin", headers=viewer)).status_code == 200
    written = await stack.ui.patch(f"{url}/twin/desired", json=patch, headers=operator)
    assert written.status_code == 200
    assert written.json()["desired_version"] == 1


async def test_tenant_isolation(stack: Stack) -> None:
    _, alice = await stack.tenant("admin")
    _, bob = await stack.tenant("admin")
    device_id = (await stack.device(alice))["device_id"]
    url = f"/customer/devices/{device_id}"
    calls = [
        ("GET", url, None),
        ("GET", f"{url}/twin", None),
        ("GET", f"{url}/twin/delta", None),
        ("PATCH", f"{url}/twin/desired", {"desired": {"x": 1}}),
        ("POST", f"{url}/provision-token", None),
        ("DELETE", url, None),
    ]
    for method, path, body in calls:
        response = await stack.ui.request(method, path, json=body, headers=bob)
        assert response.status_code == 404, (method, path)
    listed = (await stack.ui.get("/customer/devices", headers=bob)).json()
    assert listed == {"items": [], "next": None}
    twin = (await stack.ui.get(f"{url}/twin", headers=alice)).json()
    assert twin["desired_version"] == 0  # bob's PATCH wrote nothing
    assert (await stack.ui.get(url, headers=alice)).status_code == 200


async def test_registry_create_list_page_delete_rotate(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    named = await stack.device(admin, device_id="pump-1", name="Pump one")
    assert named["device_id"] == "pump-1" and named["tenant_id"] == tenant_id
    assert named["provision_token"].startswith("tok-") and len(named["provision_token"]) >= 4 + 43
    again = await stack.ui.post("/customer/devices", json={"device_id": "pump-1"}, headers=admin)
    assert again.status_code == 409
    for bad_id in ("a/b", "a+b", "#", "", "-lead", "x" * 129):
        bad = await stack.ui.post("/customer/devices", json={"device_id": bad_id}, headers=admin)
        assert bad.status_code == 422, bad_id
    for _ in range(4):
        await stack.device(admin)

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await stack.ui.get("/customer/devices", params=params, headers=admin)).json()
        assert len(page["items"]) <= 2
        seen += [item["device_id"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert len(seen) == 5 and len(set(seen)) == 5 and seen == sorted(seen)
    first = (await stack.ui.get("/customer/devices", headers=admin)).json()["items"][0]
    assert set(first) >= {
        "device_id",
        "name",
        "tags",
        "sync_status",
        "desired_version",
        "reported_version",
        "last_seen",
    }
    assert (await stack.ui.get("/customer/devices?cursor=%%%", headers=admin)).status_code == 422
    assert (await stack.ui.get("/customer/devices?limit=0", headers=admin)).status_code == 422
    assert (
        await stack.ui.get("/customer/devices?sync_status=odd", headers=admin)
    ).status_code == 422

    old = {"X-Provision-Token": named["provision_token"]}
    assert (await stack.ingest.get("/device/v1/shadow", headers=old)).status_code == 200
    rotated = await stack.ui.post("/customer/devices/pump-1/provision-token", headers=admin)
    assert rotated.status_code == 200
    new = {"X-Provision-Token": rotated.json()["provision_token"]}
    assert (await stack.ingest.get("/device/v1/shadow", headers=old)).status_code == 401
    assert (await stack.ingest.get("/device/v1/shadow", headers=new)).status_code == 200

    assert (await stack.ui.delete("/customer/devices/pump-1", headers=admin)).status_code == 204
    assert (await stack.ingest.get("/device/v1/shadow", headers=new)).status_code == 401
    assert (await stack.ui.get("/customer/devices/pump-1/twin", headers=admin)).status_code == 404
    assert (await stack.ui.delete("/customer/devices/pump-1", headers=admin)).status_code == 404


async def test_no_raw_secrets_in_the_database(stack: Stack) -> None:
    _tenant_id, admin = await stack.tenant("admin")
    created = await stack.device(admin)
    token = created["provision_token"]
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        dump = ""
        for table in ("tenants", "users", "devices", "device_state"):
            rows = await conn.fetch(f"SELECT * FROM {table}")  # noqa: S608 - fixed names
            dump += repr([dict(row) for row in rows])
        assert "pw-123456" not in dump  # the password stack.tenant() uses
        assert token not in dump and token[4:] not in dump
        assert "$argon2" in dump
    finally:
        await conn.close()


async def test_unknown_paths_and_methods_are_json(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    assert (await stack.ui.get("/customer/nothing", headers=admin)).json() == {
        "detail": "not found"
    }
    wrong = await stack.ui.put("/customer/devices", headers=admin)
    assert wrong.status_code == 405 and "detail" in wrong.json()


async def test_database_down_is_503_json(broker, database_url: str) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings, running_stack

    dead = f"postgresql://iot@127.0.0.1:{free_port()}/nothing"
    async with running_stack(make_settings(dead, broker.url), broker) as down:
        token = jwt.encode(
            {
                "sub": "1",
                "email": "a@b.c",
                "tenant": "t",
                "role": "admin",
                "iat": int(time.time()),
                "exp": int(time.time()) + 60,
            },
            down.settings.jwt_secret,
            algorithm="HS256",
        )
        response = await down.ui.get(
            "/customer/devices", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 503
        assert response.json()["detail"].startswith("database unavailable")
        ready = await down.ui.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
        device = await down.ingest.get("/device/v1/shadow", headers={"X-Provision-Token": "tok-x"})
        assert device.status_code == 503
        assert (await down.ui.get("/healthz")).status_code == 200


async def test_concurrent_migrations_leave_one_schema(pg_server: str) -> None:
    from tests.support import with_database

    name = f"mig_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    admin = await asyncpg.connect(with_database(pg_server, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {**os.environ, "DATABASE_URL": with_database(pg_server, name)}
        runs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "iotcloud.cli",
                "migrate",
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        results = [await run.communicate() for run in runs]
        assert [run.returncode for run in runs] == [0, 0], results
        conn = await asyncpg.connect(with_database(pg_server, name))
        try:
            versions = [
                row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")
            ]
            assert len(versions) == len(set(versions)) >= 3
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def test_services_refuse_a_missing_or_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@127.0.0.1/x")
    monkeypatch.setenv("MQTT_URL", "mqtt://127.0.0.1:1")
    monkeypatch.delenv("IOTCLOUD_DEV", raising=False)
    monkeypatch.delenv("IOTCLOUD_JWT_SECRET", raising=False)
    with pytest.raises(SettingsError):
        Settings.from_env(application="ui_iot")
    monkeypatch.setenv("IOTCLOUD_JWT_SECRET", "dev-insecure-secret-change-me")
    with pytest.raises(SettingsError):
        Settings.from_env(application="ui_iot")
    monkeypatch.setenv("IOTCLOUD_JWT_SECRET", "short")
    with pytest.raises(SettingsError):
        Settings.from_env(application="ui_iot")
    monkeypatch.setenv("IOTCLOUD_DEV", "1")
    assert Settings.from_env(application="ui_iot").dev_mode
    monkeypatch.delenv("IOTCLOUD_DEV")
    monkeypatch.setenv("IOTCLOUD_JWT_SECRET", "z" * 40)
    assert Settings.from_env(application="ui_iot").jwt_secret == "z" * 40


def test_serve_exits_with_a_message_without_a_secret() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"IOTCLOUD_JWT_SECRET", "IOTCLOUD_DEV"}}
    env |= {"DATABASE_URL": "postgresql://x@127.0.0.1:1/x", "MQTT_URL": "mqtt://127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "-m", "iotcloud.cli", "serve", "ui"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "IOTCLOUD_JWT_SECRET" in result.stderr and "Traceback" not in result.stderr
