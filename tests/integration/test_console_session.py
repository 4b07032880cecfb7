"""The console's session: HttpOnly SameSite=Strict cookie (Secure over TLS), CSRF on writes,
security headers; bearer tokens unchanged for scripts."""

from __future__ import annotations

import time

import httpx
import jwt

from tests.conftest import Stack

PASSWORD = "pw-123456"  # Stack.tenant's


async def email_of(stack: Stack, headers: dict[str, str]) -> str:
    (me,) = (await stack.ui.get("/customer/users", headers=headers)).json()["items"]
    return str(me["email"])


def console(stack: Stack, scheme: str = "http") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(stack.ui_app), base_url=f"{scheme}://console.test"
    )


async def test_a_cookie_session_with_csrf_on_writes(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    email = await email_of(stack, admin)
    async with console(stack) as browser:
        opened = await browser.post("/auth/session", data={"username": email, "password": PASSWORD})
        assert opened.status_code == 200, opened.text
        body = opened.json()
        assert (body["email"], body["role"], body["tenant_id"]) == (email, "admin", tenant_id)
        assert "access_token" not in body
        cookies = opened.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("iotcloud_session="))
        csrf_cookie = next(c for c in cookies if c.startswith("iotcloud_csrf="))
        assert "HttpOnly" in session and "SameSite=strict" in session
        assert "Secure" not in session  # plain HTTP here
        assert "HttpOnly" not in csrf_cookie
        csrf = body["csrf_token"]
        assert browser.cookies["iotcloud_csrf"] == csrf

        # Reads need nothing more than the cookie.
        assert (await browser.get("/customer/devices")).status_code == 200
        assert (await browser.get("/auth/session")).json()["email"] == email
        # A write without (or with a wrong) CSRF header is refused and changes nothing.
        for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": ""}):
            refused = await browser.post(
                "/customer/devices", json={"device_id": "via-cookie"}, headers=headers
            )
            assert refused.status_code == 403, refused.text
            assert "X-CSRF-Token" in refused.json()["detail"]
        assert (
            await stack.ui.get("/customer/devices/via-cookie", headers=admin)
        ).status_code == 404
        created = await browser.post(
            "/customer/devices", json={"device_id": "via-cookie"}, headers={"X-CSRF-Token": csrf}
        )
        assert created.status_code == 201, created.text

        # Signing out clears the cookies.
        closed = await browser.delete("/auth/session")
        assert closed.status_code == 204
        assert (await browser.get("/customer/devices")).status_code == 401

    # Bearer tokens need no CSRF header (no browser sends them by itself).
    scripted = await stack.ui.post(
        "/customer/devices", json={"device_id": "via-bearer"}, headers=admin
    )
    assert scripted.status_code == 201


async def test_forged_expired_and_revoked_cookies_are_refused(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    email = await email_of(stack, admin)
    claims = jwt.decode(admin["Authorization"].split()[1], options={"verify_signature": False})
    forged = {
        "garbage": "not-a-token",
        "other key": jwt.encode({**claims, "role": "admin"}, "x" * 48),
        "expired": jwt.encode(
            {**claims, "exp": int(time.time()) - 1}, stack.settings.jwt_secret, algorithm="HS256"
        ),
    }
    for name, value in forged.items():
        async with console(stack) as browser:
            browser.cookies.set("iotcloud_session", value)
            response = await browser.get("/customer/devices")
            assert response.status_code == 401, name
    async with console(stack) as browser:
        opened = await browser.post("/auth/session", data={"username": email, "password": PASSWORD})
        csrf = opened.json()["csrf_token"]
        # A password change through the cookie session keeps this session with a new cookie...
        changed = await browser.post(
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": "a-new-long-password"},
            headers={"X-CSRF-Token": csrf},
        )
        assert changed.status_code == 204
        assert (await browser.get("/customer/devices")).status_code == 200
    # ...and ends every other token of the user.
    assert (await stack.ui.get("/customer/devices", headers=admin)).status_code == 401
    assert tenant_id


async def test_secure_cookie_and_security_headers(stack: Stack) -> None:
    _tenant, admin = await stack.tenant("admin")
    email = await email_of(stack, admin)
    async with console(stack, "https") as browser:
        opened = await browser.post("/auth/session", data={"username": email, "password": PASSWORD})
        assert all("Secure" in c for c in opened.headers.get_list("set-cookie"))
        assert "max-age" in opened.headers["strict-transport-security"]
    for path in ("/", "/customer/devices", "/healthz"):
        response = await stack.ui.get(path, headers=admin)
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in response.headers
    docs = await stack.ui.get("/docs")
    assert "cdn.jsdelivr.net" in docs.headers["content-security-policy"]


async def test_the_event_stream_needs_no_token_in_the_url(stack: Stack) -> None:
    _tenant, admin = await stack.tenant("admin")
    email = await email_of(stack, admin)
    async with console(stack) as browser:
        await browser.post("/auth/session", data={"username": email, "password": PASSWORD})
        # httpx's ASGI transport returns a response once its body ends: with the event hub
        # closed, a stream sends its opening lines and ends.
        stack.ui_app.state.events.close()
        events = await browser.get("/customer/events")
        assert events.status_code == 200, events.text
        assert events.headers["content-type"].startswith("text/event-stream")
        assert events.text.startswith("retry:")
    async with console(stack) as anonymous:
        assert (await anonymous.get("/customer/events")).status_code == 401
