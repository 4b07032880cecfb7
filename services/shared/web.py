"""What both HTTP services share: error rendering, health, metrics, body limits, JSON bodies."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.db import UNAVAILABLE_ERRORS
from shared.errors import DomainError, TooLarge, Unprocessable, raise_if_refused
from shared.settings import Settings
from shared.twin import nul_refusal_in_json

log = logging.getLogger(__name__)

REQUEST_LATENCY = Histogram(
    "iotcloud_http_request_seconds",
    "HTTP request latency by service, route and status",
    ["service", "route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

BROKER_CONNECTED = Gauge(
    "iotcloud_broker_connected", "1 while the service is connected to the broker", ["service"]
)
POOL_CONNECTIONS = Gauge(
    "iotcloud_db_pool_connections",
    "Database pool connections by state (in_use, idle, max)",
    ["service", "state"],
)


class ORJSONResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _json_error(status: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    return ORJSONResponse({"detail": detail}, status_code=status, headers=headers)


def _validation_message(error: dict[str, Any]) -> str:
    message = str(error.get("msg", ""))
    context = error.get("ctx")
    if isinstance(context, dict) and "error" in context:  # e.g. why the JSON did not decode
        message += f": {context['error']}"
    return message


def install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"detail": ...}``; nothing reaches a client as a stack trace."""

    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return _json_error(exc.status_code, exc.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            {
                "loc": list(err.get("loc", ())),
                "msg": _validation_message(err),
                "type": err.get("type", ""),
            }
            for err in exc.errors()
        ]
        return _json_error(422, errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _json_error(exc.status_code, exc.detail, dict(exc.headers or {}) or None)

    @app.exception_handler(asyncpg.exceptions.CharacterNotInRepertoireError)
    @app.exception_handler(asyncpg.exceptions.UntranslatableCharacterError)
    async def unstorable_text(request: Request, exc: Exception) -> Response:
        # PostgreSQL's text and jsonb cannot hold U+0000: bodies are checked for it before
        # they reach the database, and this answers for any other input (a name, a query
        # parameter) that still carries one. The transaction rolled back: nothing written.
        log.info("unstorable text during %s %s: %r", request.method, request.url.path, exc)
        return _json_error(
            422, "the request holds a character that cannot be stored (NUL, \\u0000)"
        )

    async def database_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("database unavailable during %s %s: %r", request.method, request.url.path, exc)
        return _json_error(503, "database unavailable, retry shortly", {"Retry-After": "1"})

    # Registered per class so the exception middleware answers (the catch-all below would
    # answer too, but re-raises into the server's error log).
    for error_class in UNAVAILABLE_ERRORS:
        app.add_exception_handler(error_class, database_unavailable)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error during %s %s", request.method, request.url.path)
        return _json_error(500, "internal error")


def app_settings(request: Request) -> Settings:
    """The settings the app's lifespan put on ``app.state``."""
    value: Settings = request.app.state.settings
    return value


async def json_body(request: Request) -> Any:
    """Decode a JSON body with orjson: malformed, too deeply nested or holding a NUL
    character is 422, never a 500."""
    return decode_json(await request.body())


def decode_json(raw: bytes) -> Any:
    """:func:`json_body` for a body already read."""
    if not raw:
        raise Unprocessable("request body must be JSON")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"request body is not valid JSON: {exc}") from exc
    raise_if_refused(nul_refusal_in_json(raw, value))
    return value


def json_body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a JSON body that the route reads itself with :func:`json_body`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class _StorableJSONRequest(Request):
    """A request whose ``json()`` is orjson's (which refuses lone surrogates, unlike the
    standard library's) and refuses NUL characters: text PostgreSQL cannot store."""

    async def json(self) -> Any:
        raw = await self.body()
        value = orjson.loads(raw)  # orjson.JSONDecodeError is a json.JSONDecodeError
        refusal = nul_refusal_in_json(raw, value)
        if refusal is not None:
            # FastAPI answers a json.JSONDecodeError as a 422 naming the error.
            raise json.JSONDecodeError(refusal.message, raw.decode(errors="replace"), 0)
        return value


class StorableJSONRoute(APIRoute):
    """Routes whose pydantic bodies are parsed by :class:`_StorableJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def storable_json_handler(request: Request) -> Response:
            return await handler(_StorableJSONRequest(request.scope, request.receive))

        return storable_json_handler


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 before anything parses them."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send)
                return
            if name == b"transfer-encoding":
                chunked = True
        if not chunked:
            # The body is the declared Content-Length (none declared: no body), and the
            # server passes on no more than that: nothing left to count.
            await self.app(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise TooLarge(f"request body is larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, send: Send) -> None:
        body = orjson.dumps({"detail": f"request body is larger than {self.max_bytes} bytes"})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Request latency by route, method and status, as plain ASGI (Starlette's
    ``BaseHTTPMiddleware`` costs a task and a stream per request)."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service
        # Each label set's histogram, looked up once (``labels()`` costs a lock per call).
        self._observe: dict[tuple[str, str, int], Callable[[float], None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_measured(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_measured)
        finally:
            # The router records the matched route in this same scope.
            key = (getattr(scope.get("route"), "path", "unmatched"), scope["method"], status)
            observe = self._observe.get(key)
            if observe is None:
                path, method, _ = key
                histogram = REQUEST_LATENCY.labels(self.service, path, method, str(status))
                observe = self._observe[key] = histogram.observe
            observe(time.perf_counter() - started)


def install_metrics(app: FastAPI, *, service: str) -> None:
    app.add_middleware(MetricsMiddleware, service=service)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        # Sampled at scrape time from what the lifespan put on app.state (pool, broker link).
        pool = getattr(app.state, "pool", None)
        if pool is not None:
            idle = pool.get_idle_size()
            POOL_CONNECTIONS.labels(service, "in_use").set(pool.get_size() - idle)
            POOL_CONNECTIONS.labels(service, "idle").set(idle)
            POOL_CONNECTIONS.labels(service, "max").set(pool.get_max_size())
        link = getattr(app.state, "broker", None)
        if link is not None:
            BROKER_CONNECTED.labels(service).set(1 if link.connected.is_set() else 0)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def install_health(app: FastAPI, ready_checks: Callable[[], Awaitable[dict[str, bool]]]) -> None:
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> Response:
        checks = await ready_checks()
        ok = all(checks.values())
        return ORJSONResponse(
            {"status": "ready" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )


async def database_ready(pool: asyncpg.Pool) -> bool:
    try:
        async with pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
    except Exception:  # any failure at all means "not ready"
        return False
    return True
