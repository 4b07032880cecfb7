"""ingest_iot.publisher.send_in_chunks: a bulk job's AWS outbox (hundreds of thousands of
publishes) goes out a bounded number at a time, since aiomqtt's cost per publish grows with
the publishes pending (docs/benchmarks.md, "Staged rollout")."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest

from ingest_iot.publisher import send_in_chunks


class Sends:
    def __init__(self) -> None:
        self.in_flight = self.most = 0
        self.done: list[int] = []

    async def send(self, n: int, *, fail: bool = False) -> None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0)
        self.in_flight -= 1
        if fail:
            raise OSError(f"send {n} failed")
        self.done.append(n)


async def test_all_sent_at_most_at_once_in_order_of_chunks() -> None:
    sends = Sends()
    await send_in_chunks([sends.send(n) for n in range(2_345)], at_once=500)
    assert sorted(sends.done) == list(range(2_345))
    assert sends.most == 500
    # A chunk is done before the next one starts.
    assert sorted(sends.done[:500]) == list(range(500))
    assert sorted(sends.done[2_000:]) == list(range(2_000, 2_345))


async def test_a_failure_stops_and_closes_the_sends_not_started() -> None:
    sends = Sends()
    coroutines: list[Any] = [sends.send(n, fail=n == 7) for n in range(30)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail here
        with pytest.raises(OSError, match="send 7 failed"):
            await send_in_chunks(coroutines, at_once=10)
    assert sorted(sends.done) == [n for n in range(10) if n != 7]
    assert all(c.cr_frame is None for c in coroutines[10:])  # closed, never run


async def test_nothing_to_send() -> None:
    await send_in_chunks([])
