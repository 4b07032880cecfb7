"""The console's session: an HttpOnly cookie holding the operator's token, a CSRF token for
writes, and the security headers of every response.

Scripts keep using ``Authorization: Bearer``; the console signs in with ``POST
/auth/session`` and never sees its token. The cookie is ``SameSite=Strict`` and, over TLS,
``Secure``. A write authenticated by the cookie must carry ``X-CSRF-Token``: an HMAC of the
session token, handed to the console in the sign-in answer and in the readable
``iotcloud_csrf`` cookie. A page of another site can neither read that cookie nor compute
the HMAC, so it cannot forge the header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from fastapi import Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import Forbidden
from shared.security import key_ring

SESSION_COOKIE = "iotcloud_session"
CSRF_COOKIE = "iotcloud_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(token: str, *, secret: str) -> str:
    ring = key_ring(secret)
    digest = hmac.new(
        ring.keys[ring.signing_kid].encode(), b"csrf:" + token.encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def require_csrf(request: Request, token: str, *, secret: str) -> None:
    sent = request.headers.get(CSRF_HEADER, "")
    ring = key_ring(secret)
    expected = [
        base64.urlsafe_b64encode(
            hmac.new(key.encode(), b"csrf:" + token.encode(), hashlib.sha256).digest()
        )
        .decode()
        .rstrip("=")
        for key in ring.keys.values()
    ]
    if not sent or not any(hmac.compare_digest(sent, value) for value in expected):
        raise Forbidden(f"a write signed in by cookie needs the {CSRF_HEADER} header")


def over_tls(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session(
    response: Response, request: Request, token: str, *, secret: str, ttl_s: int
) -> str:
    csrf = csrf_token(token, secret=secret)
    secure = over_tls(request)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=ttl_s,
        path="/",
        httponly=True,
        secure=secure,
        samesite="strict",
    )
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=ttl_s, path="/", httponly=False, secure=secure, samesite="strict"
    )
    return csrf


def clear_session(response: Response, request: Request) -> None:
    secure = over_tls(request)
    for name, httponly in ((SESSION_COOKIE, True), (CSRF_COOKIE, False)):
        response.delete_cookie(name, path="/", httponly=httponly, secure=secure, samesite="strict")


# The console loads nothing from elsewhere; /docs (Swagger UI) loads its script and style
# from a CDN, so it gets a policy of its own.
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "img-src 'self' data: https://fastapi.tiangolo.com; object-src 'none'; "
    "frame-ancestors 'none'"
)
_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
_CONSOLE_HEADERS = [*_COMMON, (b"content-security-policy", CONSOLE_CSP.encode())]
_DOCS_HEADERS = [*_COMMON, (b"content-security-policy", DOCS_CSP.encode())]
_HSTS = (b"strict-transport-security", b"max-age=31536000")


class SecurityHeadersMiddleware:
    """Adds the headers to every HTTP response (a plain ASGI middleware: no per-request
    task or body buffering, unlike Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        extra = _DOCS_HEADERS if path.startswith(("/docs", "/redoc")) else _CONSOLE_HEADERS
        if scope.get("scheme") == "https":
            extra = [*extra, _HSTS]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
