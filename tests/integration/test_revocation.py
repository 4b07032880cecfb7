"""Revocation at once (SPEC §10): a change made through one ui_iot replica reaches a token's
use on another within a second, with both replicas' caches warm; SSE streams end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import uvicorn

from shared.security import Principal, issue_token, key_id
from tests.conftest import Stack, make_settings
from tests.support import eventually, free_port

PASSWORD = "a-long-enough-password"


@contextlib.asynccontextmanager
async def replica(stack: Stack, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """A second ui_iot over the same database, served on a real port as another process
    would serve it (a real server also streams, where httpx's ASGI transport buffers)."""
    from dataclasses import replace

    from ui_iot.app import create_app

    app = create_app(replace(stack.settings, **overrides))  # type: ignore[arg-type]
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )
    async with app.router.lifespan_context(app):
        serving = asyncio.ensure_future(server.serve())

        async def started() -> bool:
            return bool(server.started)

        await eventually(started, timeout=10, interval=0.01)
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=httpx.Timeout(10, read=30)
            ) as client:
                yield client
        finally:
            server.should_exit = True
            await serving


async def within_a_second(client: httpx.AsyncClient, headers: dict[str, str], status: int) -> float:
    """Seconds until ``GET /customer/users`` answers ``status``; fails after one second."""
    started = time.monotonic()
    while True:
        response = await client.get("/customer/users", headers=headers)
        elapsed = time.monotonic() - started
        if response.status_code == status:
            return elapsed
        assert elapsed < 1.0, f"still {response.status_code} after {elapsed:.2f} s"
        await asyncio.sleep(0.02)


async def new_admin(stack: Stack, admin: dict[str, str], email: str) -> tuple[int, dict[str, str]]:
    created = await stack.ui.post(
        "/customer/users",
        json={"email": email, "password": PASSWORD, "role": "admin"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    login = await stack.ui.post("/auth/token", data={"username": email, "password": PASSWORD})
    assert login.status_code == 200
    return created.json()["user_id"], {"Authorization": f"Bearer {login.json()['access_token']}"}


async def test_revocation_reaches_another_replica_within_a_second(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    async with replica(stack) as other:
        cases = [
            ("disable", "PATCH", {"disabled": True}, 401),
            ("demote", "PATCH", {"role": "viewer"}, 403),
            ("delete", "DELETE", None, 401),
        ]
        for name, method, body, status in cases:
            user_id, headers = await new_admin(stack, admin, f"{name}@{tenant_id}.test")
            # Both replicas have seen the token and hold the user's state.
            for client in (stack.ui, other):
                assert (await client.get("/customer/users", headers=headers)).status_code == 200
            changed = await stack.ui.request(
                method, f"/customer/users/{user_id}", json=body, headers=admin
            )
            assert changed.status_code in {200, 204}, changed.text
            await within_a_second(other, headers, status)
            assert (await stack.ui.get("/customer/users", headers=headers)).status_code == status

        # A password changed on the other replica ends the first replica's use of the token.
        _user_id, headers = await new_admin(stack, admin, f"password@{tenant_id}.test")
        assert (await stack.ui.get("/customer/users", headers=headers)).status_code == 200
        changed = await other.post(
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": "a-brand-new-password"},
            headers=headers,
        )
        assert changed.status_code == 204
        await within_a_second(stack.ui, headers, 401)


async def test_a_revoked_users_event_stream_is_closed(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    user_id, headers = await new_admin(stack, admin, f"watcher@{tenant_id}.test")
    async with replica(stack) as other:
        async with other.stream("GET", "/customer/events", headers=headers) as events:
            assert events.status_code == 200
            lines = events.aiter_lines()
            assert (await anext(lines)).startswith("retry:")
            disabled = await stack.ui.patch(
                f"/customer/users/{user_id}", json={"disabled": True}, headers=admin
            )
            assert disabled.status_code == 200
            started = time.monotonic()

            async def drain() -> None:
                async for _line in lines:
                    pass

            await asyncio.wait_for(drain(), timeout=2.0)
            assert time.monotonic() - started < 1.5
        # Nor can it be opened again.
        again = await other.get("/customer/events", headers=headers)
        assert again.status_code == 401
        query = await other.get(
            "/customer/events", params={"access_token": headers["Authorization"].split()[1]}
        )
        assert query.status_code == 401


async def test_keys_rotate_the_first_signs_every_one_verifies(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    old_key = stack.settings.jwt_secret
    old_token = admin["Authorization"].split()[1]
    assert jwt.get_unverified_header(old_token)["kid"] == key_id(old_key)
    new_key = "n" * 48
    # Step 1 of the rotation: the new key first, the old one still verifying.
    async with replica(stack, jwt_secret=f"{new_key},{old_key}") as rotated:
        assert (await rotated.get("/customer/users", headers=admin)).status_code == 200
        users = (await rotated.get("/customer/users", headers=admin)).json()["items"]
        login = await rotated.post(
            "/auth/token", data={"username": users[0]["email"], "password": "pw-123456"}
        )
        new_token = login.json()["access_token"]
        assert jwt.get_unverified_header(new_token)["kid"] == key_id(new_key)
        new_headers = {"Authorization": f"Bearer {new_token}"}
        assert (await rotated.get("/customer/users", headers=new_headers)).status_code == 200
    # Step 2, once the old tokens have expired: the old key goes.
    async with replica(stack, jwt_secret=new_key) as renewed:
        assert (await renewed.get("/customer/users", headers=new_headers)).status_code == 200
        assert (await renewed.get("/customer/users", headers=admin)).status_code == 401
        # A token naming an unknown key, or the old key's kid on a forged signature, fails.
        who = Principal(1, f"x@{tenant_id}.test", tenant_id, "admin")
        stranger = issue_token(who, secret="s" * 48, ttl_s=60)
        for token in (stranger, old_token):
            refused = await renewed.get(
                "/customer/users", headers={"Authorization": f"Bearer {token}"}
            )
            assert refused.status_code == 401
    assert make_settings  # the fixture helper this module builds on
