"""Device reports, for the MQTT bridge and the HTTP device API's group commit alike.

Every report that has arrived is applied as one unit of work: one statement locks all their
twins (in device id order, like every other multi-row writer), ``shared.twin.apply_report``
applies the reports in memory in delivery order — several of one device apply one after
another, each seeing the last — and one statement writes the twins and their history. A
batch of hundreds costs two round trips and one commit.

An accepted report merges into reported state, stamps metadata with the transaction clock
and adds one history row; a refused or malformed one only marks the device seen and is
answered with the reported version current at that point of the sequence; one that breaks
the model's reported schema is accepted and counted. A report on a topic of no live device
is dropped without a reply. The twin event stream gets one event per device per batch (its
final versions) instead of one per report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import orjson

from shared import twin
from shared.db import Connection
from shared.errors import DomainError
from shared.repositories import report_batches as repo
from shared.repositories import shadows as shadows_repo
from shared.services import history as history_service
from shared.services.history import Actor
from shared.services.twins import lock_or_create_shadow

JSON = Any


@dataclass(frozen=True, slots=True)
class IncomingReport:
    """A report as it came off the broker: the topic's tenant and device, the raw payload."""

    tenant_id: str
    device_id: str
    payload: bytes
    shadow: str = ""  # a named shadow's name (SPEC §9); "" is the classic shadow


@dataclass(frozen=True, slots=True)
class AppliedReport:
    """What became of one report.

    ``outcome`` is the metric label (accepted, superseded, version, malformed, too_large,
    foreign);
    ``reply`` the body for the device's accepted/rejected topic, None when it gets none;
    ``refusal`` why a refused report was refused.
    """

    outcome: str
    reply: dict[str, JSON] | None
    schema_violations: int = 0
    refusal: twin.Refusal | None = None

    @property
    def accepted(self) -> bool:
        """Acknowledged as accepted (HTTP 200, ``/accepted``): applied, or superseded."""
        return self.outcome in {"accepted", "superseded"}

    @property
    def applied(self) -> bool:
        return self.outcome == "accepted"


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """What a device is told of its report (the accepted/rejected body, HTTP and MQTT)."""

    accepted: bool
    version: int
    error: str | None = None
    applied: bool = True

    def as_json(self, client_token: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"accepted": self.accepted, "version": self.version}
        if self.error is not None:
            body["error"] = self.error
        if self.accepted and not self.applied:
            body["applied"] = False
        if client_token is not None:
            body["clientToken"] = client_token
        return body


@dataclass(frozen=True, slots=True)
class Unparsed:
    """A payload that never became a report (413 or 422 on HTTP)."""

    refusal: twin.Refusal
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
    reported_seq: int | None
    written: bool = False
    # A refusal this batch recorded (SPEC §11): the twin's new ``rejected``.
    rejected: dict[str, JSON] | None = None


def parse_payload(payload: bytes, limits: twin.Limits) -> twin.Report | Unparsed:
    """Decode and validate a raw report payload (HTTP body or MQTT message alike)."""
    if len(payload) > 4 * limits.max_state_bytes:
        refusal = twin.Refusal(
            "too_large", f"payload is larger than {4 * limits.max_state_bytes} bytes"
        )
        return Unparsed(refusal, None)
    try:
        decoded = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Unparsed(twin.Refusal("malformed", f"payload is not valid JSON: {exc}"), None)
    parsed = twin.nul_refusal_in_json(payload, decoded) or twin.parse_report(decoded, limits)
    if isinstance(parsed, twin.Refusal):
        return Unparsed(parsed, _client_token(decoded))
    return parsed


def _client_token(decoded: object) -> str | None:
    """Echo a well-formed clientToken even on a rejected report, so the device can match it."""
    if isinstance(decoded, dict):
        token = decoded.get("clientToken")
        if isinstance(token, str) and len(token) <= twin.MAX_CLIENT_TOKEN:
            return token
    return None


def outcome_label(refusal: twin.Refusal) -> str:
    """The metric label of a refused report."""
    if refusal.kind == "version":
        return "version"
    return "too_large" if refusal.kind == "too_large" else "malformed"


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
            reported_seq=row["reported_seq"],
        )
        for row in rows
    }
    results: list[AppliedReport] = []
    history: list[tuple[str, str, int, dict[str, JSON], str]] = []
    for incoming, report in zip(reports, parsed, strict=True):
        state = twins.get(incoming.device_id)
        if state is None or state.tenant_id != incoming.tenant_id:
            results.append(AppliedReport("foreign", None))
            continue
        results.append(_apply_one(state, report, limits=limits, at=now))
        if results[-1].applied:
            assert isinstance(report, twin.Report)
            entry = _history_entry(report)
            history.append((incoming.tenant_id, incoming.device_id, report.version, *entry))
    device_ids = sorted(twins)
    await repo.write_reported_batch(
        conn,
        device_ids=device_ids,
        written=[twins[device_id].written for device_id in device_ids],
        reported=[twins[d].reported if twins[d].written else None for d in device_ids],
        metadata=[twins[d].metadata if twins[d].written else None for d in device_ids],
        versions=[twins[d].reported_version if twins[d].written else None for d in device_ids],
        seqs=[twins[d].reported_seq if twins[d].written else None for d in device_ids],
        rejected=[twins[d].rejected for d in device_ids],
        history=history,
        actor_type=actor.type,
        actor_email=actor.email,
        at=now,
    )
    return results


def _history_entry(report: twin.Report) -> tuple[dict[str, JSON], str]:
    """The patch and kind of an applied report's history row (a refusal is its own kind)."""
    if report.rejected is None:
        return report.reported, "reported"
    patch: dict[str, JSON] = report.rejected.as_json()
    if report.reported:
        patch["reported"] = report.reported
    return patch, "rejected"


def _apply_one(
    state: _Twin, report: twin.Report | Unparsed, *, limits: twin.Limits, at: datetime
) -> AppliedReport:
    """One report on a locked twin, in memory; ``state`` is left as the report leaves it."""
    if isinstance(report, Unparsed):
        refused = ReportOutcome(False, state.reported_version, report.refusal.message)
        return AppliedReport(
            outcome_label(report.refusal),
            refused.as_json(report.client_token),
            refusal=report.refusal,
        )
    written = twin.apply_report(
        twin.Side(state.reported, state.metadata, state.reported_version),
        state.desired_version,
        report,
        limits=limits,
        at=at,
        schema=state.reported_schema,
        last_seq=state.reported_seq,
    )
    if isinstance(written, twin.Superseded):
        superseded = ReportOutcome(True, written.version, applied=False)
        return AppliedReport("superseded", superseded.as_json(report.client_token))
    if isinstance(written, twin.Refusal):
        refused = ReportOutcome(False, state.reported_version, written.message)
        return AppliedReport(
            outcome_label(written), refused.as_json(report.client_token), refusal=written
        )
    state.reported, state.metadata = written.side.state, written.side.metadata
    state.reported_version, state.written = written.side.version, True
    if report.seq is not None:
        state.reported_seq = report.seq
    if written.rejected is not None:
        state.rejected = {
            "version": report.version,
            **written.rejected.as_json(),
            "at": at.isoformat(),
        }
    violations = len(written.schema_violations)
    return AppliedReport(
        "accepted",
        ReportOutcome(True, written.side.version).as_json(report.client_token),
        violations,
    )


async def apply_named_report(
    conn: Connection,
    report: IncomingReport,
    *,
    limits: twin.Limits,
    actor: Actor,
    max_shadows: int,
) -> AppliedReport:
    """A report on a named shadow (``report.shadow``), on the rules of a classic one
    (``_apply_one``, so ``twin.apply_report``); the shadow is created by its first report.
    Call inside a transaction of its own: it locks the device's classic row to create."""
    try:
        row = await lock_or_create_shadow(
            conn,
            tenant_id=report.tenant_id,
            device_id=report.device_id,
            shadow=report.shadow,
            max_shadows=max_shadows,
        )
    except DomainError as exc:
        if exc.status_code == 404:
            return AppliedReport("foreign", None)
        refusal = twin.Refusal("malformed", str(exc.detail))
        body = ReportOutcome(False, 0, refusal.message).as_json(
            _client_token(_decoded_or_none(report.payload))
        )
        return AppliedReport("malformed", body, refusal=refusal)
    await shadows_repo.touch(conn, device_id=report.device_id)
    state = _Twin(
        tenant_id=row["tenant_id"],
        reported=row["reported_state"],
        metadata=row["reported_metadata"],
        reported_version=row["reported_version"],
        desired_version=row["desired_version"],
        reported_schema=None,
        reported_seq=row["reported_seq"],
    )
    parsed = parse_payload(report.payload, limits)
    result = _apply_one(state, parsed, limits=limits, at=row["now"])
    if result.applied:
        assert isinstance(parsed, twin.Report)
        await shadows_repo.write(
            conn,
            device_id=report.device_id,
            shadow=report.shadow,
            reported=(state.reported, state.metadata, state.reported_version),
            document_version=row["document_version"] + 1,
            rejected=state.rejected,
            reported_seq=parsed.seq,
        )
        patch, _ = _history_entry(parsed)
        kind: Literal["reported", "rejected"] = (
            "rejected" if parsed.rejected is not None else "reported"
        )
        await history_service.record(
            conn,
            tenant_id=report.tenant_id,
            device_id=report.device_id,
            actor=actor,
            entry=twin.HistoryEntry(kind, parsed.version, patch, row["now"]),
            shadow=report.shadow,
        )
    return result


def _decoded_or_none(payload: bytes) -> object:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
