"""Device reports addressed by provision token (the HTTP device API), applied as a batch.

The MQTT bridge knows each report's device from its topic; an HTTP report only carries a
token. This is :func:`shared.services.report_batches.apply_reports` with the token check in
front: one statement resolves every token of the batch and locks its device's twin, then the
batch twin rules apply the reports of the devices found and one statement writes them, each
device marked seen (what ``devices.resolve_token`` does for one). A report refused before
it was read (413, 422) comes with no payload: its device is only marked seen, as a single
refused report leaves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared import twin
from shared.db import Connection
from shared.repositories import report_batches as repo
from shared.services.history import Actor
from shared.services.report_batches import AppliedReport, IncomingReport, apply_to_locked


@dataclass(frozen=True, slots=True)
class TokenReport:
    """A report as the HTTP API received it: the token's hash and the raw body, or None
    when the body was already refused."""

    token_hash: bytes
    payload: bytes | None


@dataclass(frozen=True, slots=True)
class TokenReportResult:
    """``authenticated`` is false for a token of no live device (nothing else is said);
    ``applied`` is what became of the report, None when it came without a payload."""

    authenticated: bool
    applied: AppliedReport | None = None


UNKNOWN_TOKEN = TokenReportResult(authenticated=False)
SEEN_ONLY = TokenReportResult(authenticated=True)


async def apply_token_reports(
    conn: Connection, reports: Sequence[TokenReport], *, limits: twin.Limits, actor: Actor
) -> list[TokenReportResult]:
    """Authenticate, mark seen and apply, in arrival order; one result per report. Call
    inside a transaction."""
    holders = await repo.lock_token_holders(
        conn, list(dict.fromkeys(report.token_hash for report in reports))
    )
    devices = {row["token_hash"]: (row["tenant_id"], row["device_id"]) for row in holders}
    incoming = [
        IncomingReport(*devices[report.token_hash], report.payload)
        for report in reports
        if report.payload is not None and report.token_hash in devices
    ]
    # Every holder is marked seen, also one whose report came without a payload.
    applied = iter(await apply_to_locked(conn, holders, incoming, limits=limits, actor=actor))
    results: list[TokenReportResult] = []
    for report in reports:
        if report.token_hash not in devices:
            results.append(UNKNOWN_TOKEN)
        elif report.payload is None:
            results.append(SEEN_ONLY)
        else:
            results.append(TokenReportResult(authenticated=True, applied=next(applied)))
    return results
