"""The users API (SPEC §10): admins manage their tenant's accounts; the last admin stays."""

from __future__ import annotations

from typing import Any

from tests.conftest import Stack

PASSWORD = "a-long-enough-password"


async def sign_in(stack: Stack, email: str, password: str = PASSWORD) -> dict[str, str]:
    response = await stack.ui.post("/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def users_of(stack: Stack, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await stack.ui.get("/customer/users", headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def add_user(
    stack: Stack, headers: dict[str, str], email: str, role: str = "operator"
) -> dict[str, Any]:
    response = await stack.ui.post(
        "/customer/users",
        json={"email": email, "password": PASSWORD, "role": role},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_an_admin_adds_lists_changes_and_deletes_users(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    (me,) = await users_of(stack, admin)
    assert me["role"] == "admin" and me["disabled"] is False and me["last_login_at"] is not None

    colleague = await add_user(stack, admin, f"ops@{tenant_id}.test")
    assert set(colleague) == {
        "user_id",
        "email",
        "role",
        "disabled",
        "created_at",
        "last_login_at",
    }
    assert (colleague["role"], colleague["disabled"], colleague["last_login_at"]) == (
        "operator",
        False,
        None,
    )
    ops = await sign_in(stack, colleague["email"])
    assert (await stack.ui.get("/customer/devices", headers=ops)).status_code == 200
    # An operator manages no users.
    assert (await stack.ui.get("/customer/users", headers=ops)).status_code == 403
    refused = await stack.ui.post(
        "/customer/users",
        json={"email": "x@y.test", "password": PASSWORD, "role": "admin"},
        headers=ops,
    )
    assert refused.status_code == 403

    url = f"/customer/users/{colleague['user_id']}"
    promoted = await stack.ui.patch(url, json={"role": "admin"}, headers=admin)
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
    # The colleague's token, issued as operator, now carries the admin role.
    assert (await stack.ui.get("/customer/users", headers=ops)).status_code == 200

    disabled = await stack.ui.patch(url, json={"disabled": True}, headers=admin)
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert (await stack.ui.get("/customer/devices", headers=ops)).status_code == 401
    login = await stack.ui.post(
        "/auth/token", data={"username": colleague["email"], "password": PASSWORD}
    )
    assert login.status_code == 401
    # Enabled again: a new sign-in works, the token from before the disable does not.
    assert (await stack.ui.patch(url, json={"disabled": False}, headers=admin)).status_code == 200
    assert (await stack.ui.get("/customer/devices", headers=ops)).status_code == 401
    ops = await sign_in(stack, colleague["email"])
    assert (await stack.ui.get("/customer/devices", headers=ops)).status_code == 200

    assert (await stack.ui.delete(url, headers=admin)).status_code == 204
    assert (await stack.ui.get("/customer/devices", headers=ops)).status_code == 401
    assert [user["email"] for user in await users_of(stack, admin)] == [me["email"]]
    assert (await stack.ui.delete(url, headers=admin)).status_code == 404


async def test_the_last_enabled_admin_is_kept(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    (me,) = await users_of(stack, admin)
    url = f"/customer/users/{me['user_id']}"
    for method, body in (
        ("PATCH", {"role": "operator"}),
        ("PATCH", {"role": "viewer", "disabled": False}),
        ("PATCH", {"disabled": True}),
        ("DELETE", None),
    ):
        response = await stack.ui.request(method, url, json=body, headers=admin)
        assert response.status_code == 409, (method, body, response.text)
        assert "last enabled admin" in response.json()["detail"]
    assert await users_of(stack, admin) == [me]

    # A disabled admin does not count: with only a disabled second admin, still refused.
    second = await add_user(stack, admin, f"second@{tenant_id}.test", role="admin")
    second_url = f"/customer/users/{second['user_id']}"
    assert (
        await stack.ui.patch(second_url, json={"disabled": True}, headers=admin)
    ).status_code == 200
    assert (await stack.ui.patch(url, json={"role": "viewer"}, headers=admin)).status_code == 409
    # Enabled, the second admin lets the first step down; then the second is the last one.
    assert (
        await stack.ui.patch(second_url, json={"disabled": False}, headers=admin)
    ).status_code == 200
    stepped_down = await stack.ui.patch(url, json={"role": "viewer"}, headers=admin)
    assert stepped_down.status_code == 200 and stepped_down.json()["role"] == "viewer"
    # The first admin's token now carries the viewer role at once.
    assert (await stack.ui.get("/customer/users", headers=admin)).status_code == 403
    second_headers = await sign_in(stack, second["email"])
    assert (await stack.ui.delete(second_url, headers=second_headers)).status_code == 409


async def test_bad_input_is_a_clear_4xx_and_changes_nothing(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    other_tenant, other_admin = await stack.tenant("admin")
    colleague = await add_user(stack, admin, f"ops@{tenant_id}.test")
    (stranger,) = await users_of(stack, other_admin)
    before = await users_of(stack, admin)

    bad_creates = [
        ({"email": "x@y.test", "password": PASSWORD, "role": "root"}, 422),
        ({"email": "x@y.test", "password": "short", "role": "viewer"}, 422),
        ({"email": "not-an-email", "password": PASSWORD, "role": "viewer"}, 422),
        ({"email": "x@y.test", "password": PASSWORD, "role": "viewer", "extra": 1}, 422),
        ({"email": colleague["email"], "password": PASSWORD, "role": "viewer"}, 409),
        ({"email": colleague["email"].upper(), "password": PASSWORD, "role": "viewer"}, 409),
        ({"email": stranger["email"], "password": PASSWORD, "role": "viewer"}, 409),
        ({"email": "x@y.test", "password": "p\u0000" * 10, "role": "viewer"}, 422),
    ]
    for body, status in bad_creates:
        response = await stack.ui.post("/customer/users", json=body, headers=admin)
        assert response.status_code == status, (body, response.text)
        assert "detail" in response.json()
    weak = await stack.ui.post(
        "/customer/users", json={"email": "x@y.test", "password": "short"}, headers=admin
    )
    assert "at least 10 characters" in weak.json()["detail"]

    url = f"/customer/users/{colleague['user_id']}"
    bad_changes = [
        (url, {"role": "superuser"}, 422),
        (url, {"disabled": "maybe"}, 422),
        (url, {"unknown": True}, 422),
        (f"/customer/users/{stranger['user_id']}", {"role": "viewer"}, 404),
        ("/customer/users/999999999", {"role": "viewer"}, 404),
        ("/customer/users/99999999999999999999999", {"role": "viewer"}, 422),
        ("/customer/users/abc", {"role": "viewer"}, 422),
    ]
    for path, body, status in bad_changes:
        response = await stack.ui.patch(path, json=body, headers=admin)
        assert response.status_code == status, (path, body, response.text)
    # Another tenant's user can be neither changed nor deleted, nor told apart from nobody.
    assert (
        await stack.ui.delete(f"/customer/users/{stranger['user_id']}", headers=admin)
    ).status_code == 404
    assert await users_of(stack, admin) == before
    assert await users_of(stack, other_admin) == [stranger]
    assert other_tenant != tenant_id


async def test_changing_ones_own_password(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    colleague = await add_user(stack, admin, f"ops@{tenant_id}.test")
    first = await sign_in(stack, colleague["email"])
    second = await sign_in(stack, colleague["email"])

    wrong = await stack.ui.post(
        "/auth/password",
        json={"current_password": "not-the-password", "new_password": "another-long-one"},
        headers=first,
    )
    assert wrong.status_code == 403
    weak = await stack.ui.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "short"},
        headers=first,
    )
    assert weak.status_code == 422
    assert (await stack.ui.get("/customer/devices", headers=second)).status_code == 200

    changed = await stack.ui.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "another-long-one"},
        headers=first,
    )
    assert changed.status_code == 204
    for old in (first, second):
        assert (await stack.ui.get("/customer/devices", headers=old)).status_code == 401
    old_login = await stack.ui.post(
        "/auth/token", data={"username": colleague["email"], "password": PASSWORD}
    )
    assert old_login.status_code == 401
    fresh = await sign_in(stack, colleague["email"], "another-long-one")
    assert (await stack.ui.get("/customer/devices", headers=fresh)).status_code == 200
