"""The batch twin of :func:`shared.services.twins.apply_report`, for the MQTT bridge and the
HTTP device API's group commit.

Under load every report that has arrived is applied as one unit of work: one statement
locks all their twins (in device id order, like every other multi-row writer), the reports
are applied in memory in delivery order — several of one device apply one after another,
each seeing the last — and one statement writes the twins and their history. A single
report costs three or four round trips and a commit; a batch of hundreds costs two and one.

Every rule is ``shared.twin``'s (version rule, merge patch, limits, per-leaf metadata, JSON
Schema) and every effect mirrors ``apply_report`` plus the bridge's handling of a refused
report: an accepted report merges into reported state, stamps metadata with the transaction
clock and adds one history row; a rejected or malformed one only marks the device seen and
is answered with the reported version current at that point of the sequence; one that
breaks the model's reported schema is accepted and counted. A report on a topic of no live
device is dropped without a reply. The twin event stream gets one event per device per
batch (its final versions) instead of one per report. ``tests/integration/
test_ingest_batching.py`` checks that a batch leaves exactly what single reports leave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from shared import twin
from shared.db import Connection
from shared.errors import DomainError, TooLarge, Unprocessable
from shared.repositories import report_batches as repo
from shared.services.history import Actor
from shared.services.twins import Report, ReportOutcome, parse_report

JSON = Any


@dataclass(frozen=True, slots=True)
class IncomingReport:
    """A report as it came off the broker: the topic's tenant and device, the raw payload."""

    tenant_id: str
    device_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class AppliedReport:
    """What became of one report.

    ``outcome`` is the metric label (accepted, version, malformed, too_large, foreign);
    ``reply`` the body for the device's accepted/rejected topic, None when it gets none.
    """

    outcome: str
    reply: dict[str, JSON] | None
    schema_violations: int = 0

    @property
    def accepted(self) -> bool:
        return self.outcome == "accepted"


@dataclass(frozen=True, slots=True)
class _Refused:
    """A payload that never became a report (413 or 422 on HTTP)."""

    error: DomainError
    client_token: str | None


@dataclass(slots=True)
class _Twin:
    """One locked twin as the batch's reports leave it."""

    tenant_id: str
    reported: dict[str, JSON]
    metadata: dict[str, JSON]
    reported_version: int
    desired_version: int
    reported_schema: dict[str, JSON] | None
    written: bool = False


def parse_payload(payload: bytes, limits: twin.Limits) -> Report | _Refused:
    """Decode and validate a raw MQTT report payload (the HTTP path's rules)."""
    decoded: object = None
    try:
        if len(payload) > 4 * limits.max_state_bytes:
            raise TooLarge(f"payload is larger than {4 * limits.max_state_bytes} bytes")
        try:
            decoded = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise Unprocessable(f"payload is not valid JSON: {exc}") from exc
        return parse_report(decoded, limits)
    except DomainError as exc:
        return _Refused(exc, _client_token(decoded))


def _client_token(decoded: object) -> str | None:
    """Echo a well-formed clientToken even on a rejected report, so the device can match it."""
    if isinstance(decoded, dict):
        token = decoded.get("clientToken")
        if isinstance(token, str) and len(token) <= 64:
            return token
    return None


def _refusal_label(error: DomainError) -> str:
    return "too_large" if isinstance(error, TooLarge) else "malformed"


async def apply_reports(
    conn: Connection, reports: Sequence[IncomingReport], *, limits: twin.Limits, actor: Actor
) -> list[AppliedReport]:
    """Apply reports in delivery order; one result per report. Call inside a transaction."""
    addressed = dict.fromkeys((report.tenant_id, report.device_id) for report in reports)
    rows = await repo.lock_live_twins(
        conn,
        tenant_ids=[tenant_id for tenant_id, _ in addressed],
        device_ids=[device_id for _, device_id in addressed],
    )
    return await apply_to_locked(conn, rows, reports, limits=limits, actor=actor)


async def apply_to_locked(
    conn: Connection,
    rows: Sequence[asyncpg.Record],
    reports: Sequence[IncomingReport],
    *,
    limits: twin.Limits,
    actor: Actor,
) -> list[AppliedReport]:
    """Apply reports to twins this transaction has locked (``rows`` as
    ``repo.lock_live_twins`` returns them); a report of a twin not among them is foreign.
    Every twin in ``rows`` is marked seen, whether or not a report of it applies."""
    if not rows:
        return [AppliedReport("foreign", None) for _ in reports]
    parsed = [parse_payload(report.payload, limits) for report in reports]
    now: datetime = rows[0]["now"]
    twins = {
        row["device_id"]: _Twin(
            tenant_id=row["tenant_id"],
            reported=row["reported_state"],
            metadata=row["reported_metadata"],
            reported_version=row["reported_version"],
            desired_version=row["desired_version"],
            reported_schema=row["reported_schema"] if row["model_id"] is not None else None,
        )
        for row in rows
    }
    results: list[AppliedReport] = []
    history: list[tuple[str, str, int, dict[str, JSON]]] = []
    for incoming, report in zip(reports, parsed, strict=True):
        state = twins.get(incoming.device_id)
        if state is None or state.tenant_id != incoming.tenant_id:
            results.append(AppliedReport("foreign", None))
            continue
        results.append(_apply_one(state, report, limits=limits, at=now))
        if results[-1].accepted:
            assert isinstance(report, Report)
            history.append(
                (incoming.tenant_id, incoming.device_id, report.version, report.reported)
            )
    device_ids = sorted(twins)
    await repo.write_reported_batch(
        conn,
        device_ids=device_ids,
        written=[twins[device_id].written for device_id in device_ids],
        reported=[twins[d].reported if twins[d].written else None for d in device_ids],
        metadata=[twins[d].metadata if twins[d].written else None for d in device_ids],
        versions=[twins[d].reported_version if twins[d].written else None for d in device_ids],
        history=history,
        actor_type=actor.type,
        actor_email=actor.email,
        at=now,
    )
    return results


def _apply_one(
    state: _Twin, report: Report | _Refused, *, limits: twin.Limits, at: datetime
) -> AppliedReport:
    """One report on a locked twin, in memory: ``apply_report``'s steps and verdicts."""
    if isinstance(report, _Refused):
        refused = ReportOutcome(False, state.reported_version, str(report.error.detail))
        return AppliedReport(_refusal_label(report.error), refused.as_json(report.client_token))
    verdict = twin.check_report_version(
        report.version, state.reported_version, state.desired_version
    )
    if not verdict.accepted:
        rejected = ReportOutcome(False, state.reported_version, verdict.error)
        return AppliedReport("version", rejected.as_json(report.client_token))
    merged = twin.merge_patch(state.reported, report.reported)
    try:
        twin.check_limits(merged, limits, what="reported state")
    except twin.TwinLimitError as exc:
        error = (TooLarge if exc.too_large else Unprocessable)(str(exc))
        refused = ReportOutcome(False, state.reported_version, str(error.detail))
        return AppliedReport(_refusal_label(error), refused.as_json(report.client_token))
    state.metadata = twin.merge_metadata(
        state.metadata, report.reported, version=report.version, at=at
    )
    state.reported, state.reported_version, state.written = merged, report.version, True
    violations = (
        len(twin.schema_violations(state.reported_schema, merged))
        if state.reported_schema is not None
        else 0
    )
    accepted = ReportOutcome(True, report.version, schema_violations=violations)
    return AppliedReport("accepted", accepted.as_json(report.client_token), violations)
