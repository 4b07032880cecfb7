"""Twin reads of the operator API, coalesced: one query for all the reads waiting at once.

Each ``GET .../twin`` hands its (tenant, device) to the reader and waits. One loop (run by
the devices router's lifespan) takes every read that is waiting, fetches them all in one
statement (``twin_state.get_documents``) and answers each. Reads that arrive while a query
runs wait for the next one: every query starts after all of its reads arrived, so each read
sees at least every write committed before its request came in, never an older snapshot.
When the API is quiet a query reads one twin and goes at once.

Tenant isolation holds read by read: the statement matches each (tenant_id, device_id) pair
whole, so a device id of another tenant finds nothing (404) whatever else is in the query.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from shared import db
from shared.aio import raise_if_cancelled
from shared.errors import NotFound, ServiceUnavailable
from shared.repositories import twin_state
from shared.services.twins import TwinDocument, twin_document

log = logging.getLogger(__name__)

_MAX_BATCH = 500


@dataclass(frozen=True, slots=True)
class _Read:
    tenant_id: str
    device_id: str
    answer: asyncio.Future[asyncpg.Record | None]


class TwinReads:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._waiting: list[_Read] = []
        self._in_flight: list[_Read] = []
        self._arrived = asyncio.Event()
        self._closed = False

    async def get_twin(
        self, *, tenant_id: str, device_id: str, stale_after: timedelta
    ) -> TwinDocument:
        """The operator's twin document (404 unless the device is in this tenant), read
        together with the other reads waiting."""
        if self._closed:
            raise ServiceUnavailable("the service is shutting down")
        read = _Read(tenant_id, device_id, asyncio.get_running_loop().create_future())
        self._waiting.append(read)
        self._arrived.set()
        row = await read.answer
        if row is None:
            raise NotFound(f"device {device_id!r} not found")
        return twin_document(
            row,
            stale_after=stale_after,
            model_id=row["model_id"],
            reported_schema=row["reported_schema"],
        )

    async def run(self) -> None:
        try:
            while True:
                await self._arrived.wait()
                self._arrived.clear()
                while self._waiting:
                    self._in_flight = self._waiting[:_MAX_BATCH]
                    del self._waiting[:_MAX_BATCH]
                    await self._answer(self._in_flight)
                    self._in_flight = []
        finally:
            self._closed = True
            _fail([*self._in_flight, *self._waiting], ServiceUnavailable("shutting down"))
            self._waiting.clear()

    async def _answer(self, reads: list[_Read]) -> None:
        pairs = list(dict.fromkeys((read.tenant_id, read.device_id) for read in reads))
        try:
            async with self._pool.acquire() as conn:
                rows = await twin_state.get_documents(
                    conn,
                    tenant_ids=[tenant_id for tenant_id, _ in pairs],
                    device_ids=[device_id for _, device_id in pairs],
                )
        except db.UNAVAILABLE_ERRORS as exc:
            _fail(reads, exc)
            return
        except Exception as exc:
            raise_if_cancelled()
            if len(pairs) == 1:
                _fail(reads, exc)
                return
            # One read that cannot be made must not fail the others: read each alone.
            log.warning("a query of %d twins failed; reading them one by one", len(pairs))
            for read in reads:
                await self._answer([read])
            return
        found = {(row["tenant_id"], row["device_id"]): row for row in rows}
        for read in reads:
            if not read.answer.done():
                read.answer.set_result(found.get((read.tenant_id, read.device_id)))


def _fail(reads: list[_Read], exc: BaseException) -> None:
    for read in reads:
        if not read.answer.done():
            read.answer.set_exception(exc)
