"""Issue 18's API points: who am I (``GET /auth/me``), API docs with no CDN, a taken device
id refused alike whoever holds it, ``/auth/token`` with a JSON body, a missing device token."""

from __future__ import annotations

import re

from tests.conftest import Stack


async def test_auth_me_says_who_where_and_what_for_every_role(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    expected = {
        "viewer": (False, False),
        "operator": (True, False),
        "admin": (True, True),
    }
    for role, (writes, manages) in expected.items():
        _, headers = await stack.tenant(role, tenant_id=tenant_id)
        answer = await stack.ui.get("/auth/me", headers=headers)
        assert answer.status_code == 200, answer.text
        me = answer.json()
        assert me["tenant_id"] == tenant_id and me["tenant_name"] == tenant_id
        assert me["role"] == role and me["email"].startswith(f"{role}-")
        assert me["permissions"]["write_desired"] is writes
        assert me["permissions"]["run_bulk_jobs"] is writes
        assert me["permissions"]["manage_devices"] is manages
        assert me["permissions"]["manage_users"] is manages
    assert (await stack.ui.get("/auth/me")).status_code == 401
    forged = {"Authorization": admin["Authorization"][:-4] + "AAAA"}
    assert (await stack.ui.get("/auth/me", headers=forged)).status_code == 401


async def test_api_docs_load_nothing_from_outside(stack: Stack) -> None:
    for client in (stack.ui, stack.ingest):
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            sources = re.findall(r'(?:src|href)=["\']([^"\']+)', html)
            assert sources, html
            assert all(source.startswith("/") for source in sources), (page, sources)
            assert "cdn" not in html.lower() and "fonts.googleapis" not in html
            for source in sources:
                if source.startswith("/docs-assets/"):
                    asset = await client.get(source)
                    assert asset.status_code == 200 and len(asset.content) > 500, source


async def test_a_taken_device_id_is_refused_alike_whoever_holds_it(stack: Stack) -> None:
    _, mine = await stack.tenant("admin")
    _, theirs = await stack.tenant("admin")
    await stack.device(mine, device_id="meter-1")
    await stack.device(theirs, device_id="meter-2")
    own = await stack.ui.post("/customer/devices", json={"device_id": "meter-1"}, headers=mine)
    other = await stack.ui.post("/customer/devices", json={"device_id": "meter-2"}, headers=mine)
    assert own.status_code == other.status_code == 409
    assert own.json()["detail"].replace("meter-1", "X") == other.json()["detail"].replace(
        "meter-2", "X"
    )
    assert "unique across all tenants" in own.json()["detail"]


async def test_json_login_and_missing_device_token_say_what_is_wrong(stack: Stack) -> None:
    answer = await stack.ui.post("/auth/token", json={"username": "a@b.c", "password": "x" * 9})
    assert answer.status_code == 422 and "form fields" in answer.json()["detail"]
    missing = await stack.ingest.get("/device/v1/shadow")
    assert missing.status_code == 401
    assert missing.json() == {"detail": "missing X-Provision-Token header"}
    wrong = await stack.ingest.get("/device/v1/shadow", headers={"X-Provision-Token": "tok-x"})
    assert wrong.json() == {"detail": "invalid provision token"}
