"""Group commit for the HTTP device API: concurrent reports share one transaction.

Each ``POST /device/v1/shadow/reported`` hands its report to the batcher and waits. The
batcher (run by the app's lifespan) takes every report that is waiting, applies them in one
transaction (``shared.services.token_reports``: one statement for the tokens, the batch twin
rules, one commit) and only then answers each request. When the API is quiet a batch is one
report and goes at once; under load the next batch accumulates while one is applied, and
its statements start as soon as that one has sent its COMMIT, so one batch's commit (the
durable flush) overlaps the next one's statements.

A batch holds at most one report per token (so per device), and a token in a batch still
being applied or committed waits for a later batch: a device's reports apply one after
another in arrival order, each in a transaction of its own, and leave exactly the history,
metadata and twin events that one-at-a-time requests leave. A batch that fails for a reason
other than the database being unreachable is applied again one report at a time, as the
MQTT bridge does, so one bad report fails only its own request. When the database is
unreachable every request of the batch gets that error (503) and nothing of it is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

import asyncpg

from shared import db, twin
from shared.aio import raise_if_cancelled
from shared.errors import ServiceUnavailable
from shared.services.history import Actor
from shared.services.token_reports import TokenReport, TokenReportResult, apply_token_reports

log = logging.getLogger(__name__)

# Batches in flight at once: one running its statements while the other commits.
_PIPELINE = 2
_DEVICE = Actor.device()


@dataclass(frozen=True, slots=True)
class _Waiting:
    report: TokenReport
    answer: asyncio.Future[TokenReportResult]


class _Turn:
    """The right to run a batch's statements; given up before the COMMIT, or when done."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock
        self._held = False

    async def take(self) -> None:
        await self._lock.acquire()
        self._held = True

    def give_up(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


class HttpReportBatcher:
    def __init__(self, pool: asyncpg.Pool, *, limits: twin.Limits, max_batch: int) -> None:
        self._pool = pool
        self._limits = limits
        self._max_batch = max_batch
        self._waiting: deque[_Waiting] = deque()
        self._arrived = asyncio.Event()
        self._statements = asyncio.Lock()
        self._in_flight: set[bytes] = set()  # the tokens of batches taken, not yet answered
        self._closed = False

    async def submit(self, report: TokenReport) -> TokenReportResult:
        """Apply one report with whatever else is waiting; returns after the commit."""
        if self._closed:
            raise ServiceUnavailable("the service is shutting down")
        waiting = _Waiting(report, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        self._arrived.set()
        return await waiting.answer

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as workers:
                for n in range(_PIPELINE):
                    workers.create_task(self._work(), name=f"http-report-batch-{n}")
        finally:
            self._closed = True
            _fail(list(self._waiting), ServiceUnavailable("the service is shutting down"))
            self._waiting.clear()

    async def _work(self) -> None:
        while True:
            turn = _Turn(self._statements)
            batch: list[_Waiting] = []
            await turn.take()
            try:
                batch = await self._next_batch()
                self._in_flight.update(waiting.report.token_hash for waiting in batch)
                await self._apply(batch, turn)
            finally:
                turn.give_up()
                # Answered, unless this was cancelled (the service stops) mid-batch.
                _fail(batch, ServiceUnavailable("the service is shutting down"))
                self._in_flight.difference_update(waiting.report.token_hash for waiting in batch)
                if self._waiting:
                    self._arrived.set()  # reports held back behind this batch may go now

    async def _next_batch(self) -> list[_Waiting]:
        """Wait for reports; the oldest waiting one of each token not in flight, up to the
        cap, in arrival order. The others keep their places for a later batch."""
        while True:
            batch: list[_Waiting] = []
            later: list[_Waiting] = []
            tokens = set(self._in_flight)
            while self._waiting and len(batch) < self._max_batch:
                waiting = self._waiting.popleft()
                if waiting.answer.done():  # its request is gone
                    continue
                if waiting.report.token_hash in tokens:
                    later.append(waiting)
                else:
                    tokens.add(waiting.report.token_hash)
                    batch.append(waiting)
            self._waiting.extendleft(reversed(later))
            if batch:
                return batch
            self._arrived.clear()
            await self._arrived.wait()

    async def _apply(self, batch: list[_Waiting], turn: _Turn | None) -> None:
        try:
            async with db.transaction(self._pool) as conn:
                results = await apply_token_reports(
                    conn, [waiting.report for waiting in batch], limits=self._limits, actor=_DEVICE
                )
                if turn is not None:
                    turn.give_up()  # the commit, at the end of this block, overlaps the next batch
        except db.UNAVAILABLE_ERRORS as exc:
            _fail(batch, exc)
            return
        except Exception as exc:
            raise_if_cancelled()
            if len(batch) == 1:
                _fail(batch, exc)
                return
            # One report that cannot be applied must not fail the others: apply each alone,
            # in order; only one that fails again gets its error.
            log.warning("a batch of %d HTTP reports failed; applying them one by one", len(batch))
            for waiting in batch:
                await self._apply([waiting], None)
            return
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.answer.done():
                waiting.answer.set_result(result)


def _fail(batch: list[_Waiting], exc: BaseException) -> None:
    for waiting in batch:
        if not waiting.answer.done():
            waiting.answer.set_exception(exc)
