"""Reported state in over MQTT, applied with the same code as the HTTP path.

A report is acknowledged to the broker only after its transaction commits (manual PUBACK
on a persistent session), so nothing the broker accepted is lost if this process dies.
Messages are handled one at a time, so each device's reports apply in delivery order.
"""

from __future__ import annotations

import logging

import aiomqtt
import asyncpg
import orjson

from ingest_iot.metrics import REPORTS
from shared import db
from shared.errors import DomainError, TooLarge, Unprocessable
from shared.mqtt import BrokerLink, RetryLater
from shared.repositories import devices as devices_repo
from shared.repositories import twin_state
from shared.services import twins
from shared.services.history import Actor
from shared.services.models import REPORTED_SCHEMA_VIOLATIONS
from shared.settings import Settings
from shared.topics import parse_reported, reply_topic

log = logging.getLogger(__name__)


class ReportBridge:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self.link: BrokerLink | None = None

    async def handle(self, message: aiomqtt.Message) -> None:
        addressed = parse_reported(message.topic.value)
        if addressed is None:
            REPORTS.labels("mqtt", "foreign").inc()
            return
        tenant_id, device_id = addressed
        payload = message.payload if isinstance(message.payload, bytes) else b""
        try:
            reply = await self._apply(tenant_id, device_id, payload)
        except db.UNAVAILABLE_ERRORS as exc:
            raise RetryLater(f"database unavailable: {exc!r}") from exc
        except Exception:
            # A message that fails for any other reason would fail again on every
            # redelivery and hold up the whole stream behind it: count it, log it, ack it.
            REPORTS.labels("mqtt", "error").inc()
            log.exception("report on %s/%s could not be applied; dropped", tenant_id, device_id)
            return
        if reply is not None and self.link is not None:
            accepted = bool(reply["accepted"])
            await self.link.client.publish(
                reply_topic(tenant_id, device_id, accepted=accepted), orjson.dumps(reply), qos=1
            )

    async def _apply(
        self, tenant_id: str, device_id: str, payload: bytes
    ) -> dict[str, object] | None:
        limits = self._settings.limits
        async with db.transaction(self._pool) as conn:
            if not await devices_repo.live_belongs(conn, tenant_id=tenant_id, device_id=device_id):
                # The broker's ACLs should make this impossible; never apply, only count.
                REPORTS.labels("mqtt", "foreign").inc()
                log.warning(
                    "dropped a report on a topic of no live device: %s/%s", tenant_id, device_id
                )
                return None
            decoded: object = None
            try:
                if len(payload) > 4 * limits.max_state_bytes:
                    raise TooLarge(f"payload is larger than {4 * limits.max_state_bytes} bytes")
                decoded = _decode(payload)
                report = twins.parse_report(decoded, limits)
                outcome = await twins.apply_report(
                    conn,
                    tenant_id=tenant_id,
                    device_id=device_id,
                    report=report,
                    limits=limits,
                    actor=Actor.device(),
                )
            except DomainError as exc:
                REPORTS.labels(
                    "mqtt", "too_large" if isinstance(exc, TooLarge) else "malformed"
                ).inc()
                current = await twin_state.touch(conn, device_id=device_id)
                rejected = twins.ReportOutcome(False, current, str(exc.detail))
                return rejected.as_json(_client_token(decoded))
        REPORTS.labels("mqtt", "accepted" if outcome.accepted else "version").inc()
        if outcome.schema_violations:
            REPORTED_SCHEMA_VIOLATIONS.labels("mqtt").inc()
        return outcome.as_json(report.client_token)


def _client_token(decoded: object) -> str | None:
    """Echo a well-formed clientToken even on a rejected report, so the device can match it."""
    if isinstance(decoded, dict):
        token = decoded.get("clientToken")
        if isinstance(token, str) and len(token) <= 64:
            return token
    return None


def _decode(payload: bytes) -> object:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"payload is not valid JSON: {exc}") from exc
