"""Reported state in over MQTT, in batches, on the same twin rules as the HTTP path.

The broker link hands over every report that has arrived (up to a cap): one transaction
applies them all in delivery order (``shared.services.report_batches``), and only after it
commits are the replies handed to the client (QoS 1) and the reports acknowledged (manual
PUBACK on a persistent session), so nothing the broker accepted is lost if this process dies.
When the stream is quiet a batch is one report and nothing waits; under load a batch grows
while the previous one commits. Batches are handled one at a time, so each device's reports apply in
delivery order.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiomqtt
import asyncpg
import orjson
import paho.mqtt.client as paho

from ingest_iot.metrics import REPORT_BATCH, REPORTS
from shared import db
from shared.aio import raise_if_cancelled
from shared.mqtt import BrokerLink, RetryLater
from shared.services.history import Actor
from shared.services.models import REPORTED_SCHEMA_VIOLATIONS
from shared.services.report_batches import (
    AppliedReport,
    IncomingReport,
    apply_named_report,
    apply_reports,
)
from shared.settings import Settings
from shared.topics import (
    named_reply_topic,
    parse_aws_request,
    parse_named_reported,
    parse_reported,
    reply_topic,
)

if TYPE_CHECKING:
    from ingest_iot.aws_shadow import AwsShadowService

log = logging.getLogger(__name__)

_ERROR = AppliedReport("error", None)
_SHADOW_REQUESTS = ("$aws/", "tenant/")  # not a classic report: named or AWS, or foreign


class _Undo(Exception):
    def __init__(self, result: AppliedReport) -> None:
        self.result = result


class ReportBridge:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self.link: BrokerLink | None = None
        self.aws: AwsShadowService | None = None

    async def handle_batch(self, messages: list[paho.MQTTMessage]) -> None:
        incoming: list[IncomingReport] = []
        others: list[paho.MQTTMessage] = []
        for message in messages:
            try:
                addressed = parse_reported(message.topic)
            except UnicodeDecodeError:  # the broker checks topics are UTF-8; never trust it
                addressed = None
                others.append(message)  # counted as foreign there
                continue
            if addressed is None and message.topic.startswith(_SHADOW_REQUESTS):
                others.append(message)
                continue
            if addressed is None:
                REPORTS.labels("mqtt", "foreign").inc()
                continue
            incoming.append(IncomingReport(addressed[0], addressed[1], bytes(message.payload)))
        if incoming:
            await self._handle_classic(incoming)
        if others:
            # Named shadows and the AWS topics (SPEC §9): one request at a time, each in a
            # transaction of its own, after the classic batch.
            await self._handle_others(others)

    async def _handle_others(self, messages: list[paho.MQTTMessage]) -> None:
        for message in messages:
            try:
                topic = message.topic
            except UnicodeDecodeError:
                REPORTS.labels("mqtt", "foreign").inc()
                continue
            named = parse_named_reported(topic)
            if named is not None:
                tenant_id, device_id, shadow = named
                payload = bytes(message.payload)
                await self._named_report(IncomingReport(tenant_id, device_id, payload, shadow))
            elif self.aws is not None and parse_aws_request(topic) is not None:
                try:
                    await self.aws.handle(topic, bytes(message.payload))
                except db.UNAVAILABLE_ERRORS as exc:
                    raise RetryLater(f"database unavailable: {exc!r}") from exc
            else:
                REPORTS.labels("mqtt", "foreign").inc()

    async def _named_report(self, report: IncomingReport) -> None:
        try:
            async with db.transaction(self._pool) as conn:
                result = await apply_named_report(
                    conn,
                    report,
                    limits=self._settings.limits,
                    actor=Actor.device(),
                    max_shadows=self._settings.max_shadows,
                )
                if not result.applied:
                    raise _Undo(result)  # a refused first report creates no shadow
        except _Undo as undo:
            result = undo.result
        except db.UNAVAILABLE_ERRORS as exc:
            raise RetryLater(f"database unavailable: {exc!r}") from exc
        except Exception:
            raise_if_cancelled()
            result = self._dropped(report)
        REPORTS.labels("mqtt", result.outcome).inc()
        if self.link is not None and result.reply is not None:
            try:
                self.link.publish_nowait(
                    named_reply_topic(
                        report.tenant_id, report.device_id, report.shadow, accepted=result.accepted
                    ),
                    orjson.dumps(result.reply),
                )
            except aiomqtt.MqttError as exc:
                log.warning("reply to a named shadow report not sent: %r", exc)

    async def _handle_classic(self, incoming: list[IncomingReport]) -> None:
        REPORT_BATCH.observe(len(incoming))
        try:
            results = await self._apply(incoming)
        except db.UNAVAILABLE_ERRORS as exc:
            raise RetryLater(f"database unavailable: {exc!r}") from exc
        except Exception:
            raise_if_cancelled()
            if len(incoming) == 1:
                results = [self._dropped(incoming[0])]
            else:
                # One report that cannot be applied must not hold up the others: apply each
                # alone, in order, and drop (count, log, ack) only the one that fails.
                log.warning("a batch of %d reports failed; applying them one by one", len(incoming))
                results = [await self._apply_alone(report) for report in incoming]
        for report, result in zip(incoming, results, strict=True):
            REPORTS.labels("mqtt", result.outcome).inc()
            if result.schema_violations:
                REPORTED_SCHEMA_VIOLATIONS.labels("mqtt").inc()
            if result.outcome == "foreign":
                # The broker's ACLs should make this impossible; never apply, only count.
                log.warning(
                    "dropped a report on a topic of no live device: %s/%s",
                    report.tenant_id,
                    report.device_id,
                )
        if self.link is None:
            return
        try:
            for report, result in zip(incoming, results, strict=True):
                if result.reply is not None:
                    self.link.publish_nowait(
                        reply_topic(report.tenant_id, report.device_id, accepted=result.accepted),
                        orjson.dumps(result.reply),
                    )
        except aiomqtt.MqttError as exc:
            # The reports are committed: they must still be acknowledged, or the broker would
            # deliver them again. A reply is a courtesy the device can do without.
            log.warning("replies of a batch of %d reports not sent: %r", len(incoming), exc)

    async def _apply(self, reports: list[IncomingReport]) -> list[AppliedReport]:
        async with db.transaction(self._pool) as conn:
            return await apply_reports(
                conn, reports, limits=self._settings.limits, actor=Actor.device()
            )

    async def _apply_alone(self, report: IncomingReport) -> AppliedReport:
        try:
            (result,) = await self._apply([report])
        except db.UNAVAILABLE_ERRORS as exc:
            raise RetryLater(f"database unavailable: {exc!r}") from exc
        except Exception:
            raise_if_cancelled()
            return self._dropped(report)
        return result

    @staticmethod
    def _dropped(report: IncomingReport) -> AppliedReport:
        # A message that fails for any other reason would fail again on every redelivery
        # and hold up the whole stream behind it: count it, log it, ack it.
        log.exception(
            "report on %s/%s could not be applied; dropped", report.tenant_id, report.device_id
        )
        return _ERROR
