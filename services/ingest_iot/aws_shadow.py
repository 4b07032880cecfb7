"""The AWS IoT Device Shadow topics (SPEC §9), served by the bridge.

``$aws/things/{thing}/shadow[/name/{name}]/get|update|delete`` are answered on
``/accepted`` or ``/rejected``; an accepted update also goes out on ``update/documents``
and, when desired and reported then differ, ``update/delta``. The thing is the device id;
the broker lets a device publish only its own requests, so the thing in the topic is the
device that sent it. Each request is one transaction, on the twin rules of
``shared.twin`` (``apply_desired``, ``apply_report``): a refused request writes nothing.

The document ``version`` is the shadow's own count of accepted updates
(``document_version``); a device update that leaves the delta empty reports the current
desired version, so the twin reads ``synced`` (docs/devices.md, "AWS shadow topics").
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import asyncpg
import orjson

from shared import aws_shadow, db, twin
from shared.aio import raise_if_cancelled
from shared.aws_shadow import ShadowError, Snapshot
from shared.db import Connection
from shared.errors import DomainError
from shared.mqtt import BrokerLink
from shared.repositories import shadows as shadows_repo
from shared.services import history, models
from shared.services.history import Actor
from shared.services.twins import delete_shadow, lock_or_create_shadow
from shared.settings import Settings
from shared.topics import aws_prefix, parse_aws_request

log = logging.getLogger(__name__)

_DEVICE = Actor.device()


class _Refused(Exception):
    def __init__(self, error: ShadowError) -> None:
        self.error = error


class RateLimiter:
    """At most ``rate`` requests in any one second per thing (AWS's per-thing limit)."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._seen: defaultdict[str, deque[float]] = defaultdict(deque)

    def allow(self, thing: str, now: float | None = None) -> bool:
        moment = time.monotonic() if now is None else now
        window = self._seen[thing]
        while window and window[0] <= moment - 1.0:
            window.popleft()
        if len(window) >= self._rate:
            return False
        window.append(moment)
        if len(self._seen) > 100_000:  # forget quiet things now and then
            for key in [key for key, seen in self._seen.items() if not seen]:
                del self._seen[key]
        return True


class AwsShadowService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        link: BrokerLink | None,
        *,
        answers: Callable[[], bool] = lambda: True,
    ) -> None:
        self._answers = answers
        self._pool = pool
        self._settings = settings
        self._link = link
        self._limiter = RateLimiter(settings.shadow_rps)
        # A request is at most the state limit twice (desired and reported) plus its frame.
        self._max_payload = 2 * settings.limits.max_state_bytes + 1024

    def _send(self, topic: str, body: Any) -> None:
        if self._link is None:
            return
        try:
            self._link.publish_nowait(topic, orjson.dumps(body))
        except aiomqtt.MqttError as exc:
            log.warning("AWS shadow reply on %s not sent: %r", topic, exc)

    def _reject(self, prefix: str, operation: str, error: ShadowError) -> None:
        body = aws_shadow.error_body(error, at=datetime.now(UTC))
        self._send(f"{prefix}{operation}/rejected", body)

    async def handle(self, topic: str, payload: bytes) -> None:
        addressed = parse_aws_request(topic)
        if addressed is None or not self._answers():
            return  # another replica (the leader) answers it
        thing, shadow, operation = addressed
        prefix = aws_prefix(thing, shadow)
        token: str | None = None
        try:
            decoded = aws_shadow.parse_json(payload, max_bytes=self._max_payload)
            token = aws_shadow.parse_simple(decoded) if isinstance(decoded, dict) else None
            if not self._limiter.allow(thing):
                raise ShadowError(429, "Too Many Requests", token)
            if operation == "get":
                await self._get(thing, shadow, prefix, aws_shadow.parse_simple(decoded))
            elif operation == "delete":
                await self._delete(thing, shadow, prefix, aws_shadow.parse_simple(decoded))
            else:
                request = aws_shadow.parse_update(decoded, self._settings.limits)
                await self._update(thing, shadow, prefix, request)
        except ShadowError as error:
            if error.client_token is None and token is not None:
                error = ShadowError(error.code, error.message, token)
            self._reject(prefix, operation, error)
        except db.UNAVAILABLE_ERRORS:
            raise
        except Exception:
            raise_if_cancelled()
            log.exception("AWS shadow request on %s failed", topic)
            self._reject(prefix, operation, ShadowError(500, "Internal service failure", token))

    async def _tenant(self, conn: Connection, thing: str) -> str | None:
        tenant: str | None = await conn.fetchval(
            "SELECT tenant_id FROM devices WHERE device_id = $1 AND revoked_at IS NULL", thing
        )
        return tenant

    async def _get(self, thing: str, shadow: str, prefix: str, token: str | None) -> None:
        async with db.transaction(self._pool) as conn:
            tenant = await self._tenant(conn, thing)
            if tenant is None:
                raise ShadowError(404, "Thing not found", token)
            await shadows_repo.touch(conn, device_id=thing)
            row = await shadows_repo.get(conn, tenant_id=tenant, device_id=thing, shadow=shadow)
            now: datetime = await conn.fetchval("SELECT now()")
        if row is None:
            raise ShadowError(404, f"No shadow exists with name: '{shadow}'", token)
        self._send(
            prefix + "get/accepted", aws_shadow.get_accepted(Snapshot.of(row), at=now, token=token)
        )

    async def _delete(self, thing: str, shadow: str, prefix: str, token: str | None) -> None:
        try:
            async with db.transaction(self._pool) as conn:
                tenant = await self._tenant(conn, thing)
                if tenant is None:
                    raise _Refused(ShadowError(404, "Thing not found", token))
                row = await shadows_repo.lock(
                    conn, tenant_id=tenant, device_id=thing, shadow=shadow
                )
                if row is None:
                    raise _Refused(
                        ShadowError(404, f"No shadow exists with name: '{shadow}'", token)
                    )
                if shadow:
                    # update/documents (current: null) goes out with the retained desired
                    # message's clearing, from the publisher after commit.
                    await delete_shadow(conn, tenant_id=tenant, device_id=thing, shadow=shadow)
                else:
                    # The classic shadow is the device's twin and outlives this: its
                    # document is emptied (both sides, each as a write of its own rules).
                    await self._write(
                        conn,
                        tenant,
                        thing,
                        shadow,
                        row,
                        aws_shadow.UpdateRequest(
                            None, None, None, token, clear_desired=True, clear_reported=True
                        ),
                    )
                await shadows_repo.touch(conn, device_id=thing)
        except _Refused as refused:
            raise refused.error from None
        now = row["now"]
        self._send(
            prefix + "delete/accepted",
            aws_shadow.delete_accepted(row["document_version"], at=now, token=token),
        )
        if not shadow:
            self._send(
                prefix + "update/documents",
                aws_shadow.documents_message(Snapshot.of(row), None, at=now, token=token),
            )

    async def _update(
        self, thing: str, shadow: str, prefix: str, request: aws_shadow.UpdateRequest
    ) -> None:
        token = request.client_token
        try:
            async with db.transaction(self._pool) as conn:
                tenant = await self._tenant(conn, thing)
                if tenant is None:
                    raise _Refused(ShadowError(404, "Thing not found", token))
                if shadow:
                    try:
                        row = await lock_or_create_shadow(
                            conn,
                            tenant_id=tenant,
                            device_id=thing,
                            shadow=shadow,
                            max_shadows=self._settings.max_shadows,
                        )
                    except DomainError as exc:
                        raise _Refused(ShadowError(400, str(exc.detail), token)) from None
                else:
                    found = await shadows_repo.lock(
                        conn, tenant_id=tenant, device_id=thing, shadow=""
                    )
                    if found is None:
                        raise _Refused(ShadowError(404, "Thing not found", token))
                    row = found
                if request.version is not None and request.version != row["document_version"]:
                    raise _Refused(ShadowError(409, "Version conflict", token))
                after = await self._write(conn, tenant, thing, shadow, row, request)
                await shadows_repo.touch(conn, device_id=thing)
        except _Refused as refused:
            raise refused.error from None
        now = row["now"]
        before = Snapshot.of(row) if row["document_version"] > 0 or not shadow else None
        self._send(prefix + "update/accepted", aws_shadow.update_accepted(request, after, at=now))
        self._send(
            prefix + "update/documents",
            aws_shadow.documents_message(before, after, at=now, token=token),
        )
        if request.desired is not None or request.clear_desired:
            delta = aws_shadow.delta_message(after, at=now, token=token)
            if delta is not None:
                self._send(prefix + "update/delta", delta)

    async def _write(
        self,
        conn: Connection,
        tenant: str,
        thing: str,
        shadow: str,
        row: asyncpg.Record,
        request: aws_shadow.UpdateRequest,
    ) -> Snapshot:
        """Apply an update's desired and reported parts with the twin rules and store them
        as one update of the document (its version + 1); raises :class:`_Refused`."""
        token = request.client_token
        at: datetime = row["now"]
        limits = self._settings.limits
        schemas = None
        if row["model_id"] is not None:
            try:
                schemas = await models.schemas_for_desired_write(
                    conn, tenant_id=tenant, model_id=row["model_id"]
                )
            except DomainError:
                schemas = None
        desired = twin.Side(row["desired_state"], row["desired_metadata"], row["desired_version"])
        reported = twin.Side(
            row["reported_state"], row["reported_metadata"], row["reported_version"]
        )
        entries: list[twin.HistoryEntry] = []
        desired_patch = dict.fromkeys(desired.state) if request.clear_desired else request.desired
        if desired_patch is not None:
            written = twin.apply_desired(
                desired,
                desired_patch,
                limits=limits,
                at=at,
                model=twin.ModelSchema(row["model_id"], schemas.desired) if schemas else None,
            )
            if isinstance(written, twin.Refusal):
                raise _Refused(_error_of(written, token))
            desired = written.side
            entries.append(written.history)
        reported_patch = (
            dict.fromkeys(reported.state) if request.clear_reported else request.reported
        )
        if request.rejected is not None:
            reported_patch = reported_patch or {}
        rejected: dict[str, Any] | None = None
        if reported_patch is not None:
            merged = twin.merge_patch(reported.state, reported_patch)
            applied = desired.version if not twin.compute_delta(desired.state, merged) else None
            report = twin.Report(
                reported=reported_patch,
                version=applied if applied is not None else reported.version,
            )
            if request.rejected is not None:
                # SPEC §11: the device refuses the desired version it was sent, the current one.
                report = twin.Report(
                    reported=reported_patch, version=desired.version, rejected=request.rejected
                )
            result = twin.apply_report(
                reported,
                desired.version,
                report,
                limits=limits,
                at=at,
                schema=schemas.reported if schemas else None,
            )
            if isinstance(result, twin.Refusal):
                raise _Refused(_error_of(result, token))
            assert isinstance(result, twin.Written)
            reported = result.side
            entries.append(result.history)
            if result.rejected is not None:
                rejected = {
                    "version": desired.version,
                    **result.rejected.as_json(),
                    "at": at.isoformat(),
                }
        version = row["document_version"] + 1
        await shadows_repo.write(
            conn,
            device_id=thing,
            shadow=shadow,
            desired=(desired.state, desired.metadata, desired.version)
            if desired_patch is not None
            else None,
            reported=(reported.state, reported.metadata, reported.version)
            if reported_patch is not None
            else None,
            document_version=version,
            rejected=rejected,
        )
        for entry in entries:
            await history.record(
                conn, tenant_id=tenant, device_id=thing, actor=_DEVICE, entry=entry, shadow=shadow
            )
        return Snapshot(desired.state, reported.state, desired.metadata, reported.metadata, version)


def _error_of(refusal: twin.Refusal, token: str | None) -> ShadowError:
    if refusal.kind == "too_large":
        return ShadowError(413, "The payload exceeds the maximum size allowed", token)
    if refusal.kind == "version":
        return ShadowError(409, "Version conflict", token)
    return ShadowError(400, refusal.message, token)
