"""The ``ingest_iot`` application: device HTTP API, report bridge and desired publisher."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI

from ingest_iot import routes, routes_named
from ingest_iot.aws_shadow import AwsShadowService
from ingest_iot.bridge import ReportBridge
from ingest_iot.metrics import DESIRED_LAG
from ingest_iot.publisher import DesiredPublisher
from ingest_iot.report_batcher import HttpReportBatcher
from shared import db
from shared.aio import raise_if_cancelled
from shared.api_docs import install_docs
from shared.mqtt import SERVICE_CLIENT_PREFIX, BrokerLink, parse_mqtt_url
from shared.repositories import delivery
from shared.settings import Settings
from shared.topics import (
    AWS_SUBSCRIPTIONS,
    NAMED_REPORTED_SUBSCRIPTION,
    REPORTED_SUBSCRIPTION,
    SHARED_GROUP,
)
from shared.web import (
    BodyLimitMiddleware,
    ORJSONResponse,
    database_ready,
    install_error_handlers,
    install_health,
    install_metrics,
)

log = logging.getLogger(__name__)


def replica_name() -> str:
    """Stable across restarts of the same replica, so its broker session (and queue) survives."""
    return (
        os.environ.get("IOTCLOUD_REPLICA")
        or f"{socket.gethostname()}-{os.environ.get('INGEST_PORT', '8001')}"
    )


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await db.create_pool(
            settings.database_url, application_name="ingest_iot", max_size=settings.pool_max_size
        )
        bridge = ReportBridge(pool, settings)
        batcher = HttpReportBatcher(pool, limits=settings.limits, max_batch=_max_report_batch())

        async def on_connect() -> None:
            publisher.broker_connected()

        target = parse_mqtt_url(settings.mqtt_url)
        link = BrokerLink(
            target,
            client_id=f"{SERVICE_CLIENT_PREFIX}ingest_iot-{replica_name()}",
            # Mosquitto delivers nothing to a shared subscription on a topic that starts with
            # "$", so every replica subscribes to the AWS requests and only the one that
            # publishes desired state (the leader) answers them (ingest_iot.aws_shadow).
            subscriptions=(
                f"$share/{SHARED_GROUP}/{REPORTED_SUBSCRIPTION}",
                f"$share/{SHARED_GROUP}/{NAMED_REPORTED_SUBSCRIPTION}",
                *(AWS_SUBSCRIPTIONS if settings.aws_topics else ()),
            ),
            on_messages=bridge.handle_batch,
            max_batch=_max_report_batch(),
            on_connect=on_connect,
            persistent=True,
            manual_ack=True,
        )
        publisher = DesiredPublisher(
            pool,
            link,
            settings.database_url,
            stale_after=settings.stale_after,
            aws_topics=settings.aws_topics,
        )
        bridge.link = link
        bridge.aws = AwsShadowService(pool, settings, link, answers=lambda: publisher.leader)
        app.state.pool, app.state.link, app.state.publisher = pool, link, publisher
        app.state.report_batcher = batcher
        app.state.broker = link  # the name shared.web samples for /metrics, as in ui_iot
        try:
            async with asyncio.TaskGroup() as tasks:
                running = [
                    tasks.create_task(link.run(), name="broker-link"),
                    tasks.create_task(publisher.run(), name="desired-publisher"),
                    tasks.create_task(_sample_desired_lag(pool), name="desired-lag"),
                    tasks.create_task(batcher.run(), name="http-report-batcher"),
                ]
                try:
                    yield
                finally:
                    for task in running:
                        task.cancel()
        finally:
            await db.close_pool(pool)

    app = FastAPI(
        title="IoT Cloud device API",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
        docs_url=None,  # shared.api_docs serves them without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=4 * settings.limits.max_state_bytes)
    install_error_handlers(app)
    install_metrics(app, service="ingest_iot")

    async def ready() -> dict[str, bool]:
        return {
            "database": await database_ready(app.state.pool),
            "broker": app.state.link.connected.is_set(),
        }

    install_health(app, ready)
    install_docs(app)
    app.include_router(routes.router)
    app.include_router(routes_named.router)
    return app


def _max_report_batch() -> int:
    """Reports applied per transaction at most (``IOTCLOUD_INGEST_BATCH``, default 500), by
    the MQTT bridge and the HTTP report batcher alike.

    The broker caps the bridge's too: it has at most its in-flight window of unacknowledged
    QoS 1 messages out to this session at any time.
    """
    raw = os.environ.get("IOTCLOUD_INGEST_BATCH", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 500


async def _sample_desired_lag(pool: asyncpg.Pool) -> None:
    """Every replica reports the lag, measured in the database, whoever publishes."""
    while True:
        try:
            async with pool.acquire(timeout=2) as conn:
                DESIRED_LAG.set(await delivery.oldest_unpublished_age(conn))
        except Exception as exc:  # a gauge is never worth stopping the service for
            raise_if_cancelled()
            log.debug("desired lag not sampled: %r", exc)
        await asyncio.sleep(2)
