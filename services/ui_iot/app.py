"""The ``ui_iot`` application: operator API at ``/customer``, console at ``/``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from shared import db
from shared.api_docs import install_docs
from shared.services import events, fleet, history
from shared.settings import Settings
from shared.web import (
    BodyLimitMiddleware,
    ORJSONResponse,
    database_ready,
    install_error_handlers,
    install_health,
    install_metrics,
)
from ui_iot.routes import auth, devices, me, models
from ui_iot.routes import events as event_routes
from ui_iot.routes import fleet as fleet_routes
from ui_iot.routes import fleet_history as fleet_history_routes

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "frontend" / "dist"
_API_PREFIXES = (
    "customer/",
    "auth/",
    "docs",
    "redoc",
    "openapi.json",
    "metrics",
    "healthz",
    "readyz",
)


def create_app(settings: Settings, *, console_dir: Path = CONSOLE_DIR) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await db.create_pool(
            settings.database_url, application_name="ui_iot", max_size=settings.pool_max_size
        )
        app.state.events = events.EventHub(app.state.pool, settings.database_url)
        jobs = fleet.JobRunner(
            app.state.pool,
            settings.database_url,
            limits=settings.limits,
            stale_after=settings.stale_after,
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                running = [
                    tasks.create_task(app.state.events.run(), name="twin-event-hub"),
                    tasks.create_task(jobs.run(), name="fleet-job-runner"),
                ]
                if settings.history_retention_days > 0:
                    retention = history.run_retention(
                        app.state.pool,
                        retention_days=settings.history_retention_days,
                        interval=timedelta(hours=1),
                    )
                    running.append(tasks.create_task(retention, name="history-retention"))
                try:
                    yield
                finally:
                    app.state.events.close()  # ends open event streams
                    for task in running:
                        task.cancel()
        finally:
            await db.close_pool(app.state.pool)

    app = FastAPI(
        title="IoT Cloud operator API",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
        docs_url=None,  # shared.api_docs serves them without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=4 * settings.limits.max_state_bytes)
    install_error_handlers(app)
    install_metrics(app, service="ui_iot")

    async def ready() -> dict[str, bool]:
        return {"database": await database_ready(app.state.pool)}

    install_health(app, ready)
    install_docs(app)
    app.include_router(auth.router)
    app.include_router(me.router)
    app.include_router(devices.router)
    app.include_router(fleet_routes.router)
    app.include_router(fleet_history_routes.router)
    app.include_router(event_routes.router)
    app.include_router(models.router)
    _serve_console(app, console_dir)
    return app


def _serve_console(app: FastAPI, console_dir: Path) -> None:
    """Serve the built console, falling back to index.html for client-side routes."""
    index = console_dir / "index.html"
    assets = console_dir / "assets"
    if assets.is_dir():
        app.mount("/assets", StaticFiles(directory=assets), name="assets")

    @app.get("/{path:path}", include_in_schema=False)
    async def console(path: str) -> Response:
        if path.startswith(_API_PREFIXES):
            return ORJSONResponse({"detail": "not found"}, status_code=404)
        candidate = (console_dir / path).resolve()
        inside = candidate.is_relative_to(console_dir.resolve())  # noqa: ASYNC240
        if path and inside and candidate.is_file():
            return FileResponse(candidate)
        if index.is_file():
            return FileResponse(index, headers={"Cache-Control": "no-cache"})
        return HTMLResponse(
            "<h1>IoT Cloud</h1><p>The console is not built: run <code>make setup</code>.</p>",
            status_code=503,
        )
