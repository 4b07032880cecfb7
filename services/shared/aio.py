"""asyncio helpers that keep cancellation intact.

Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives just as the
awaited future completes (fixed in 3.12); a ``while True`` loop built on it may then never
stop, and an application's shutdown hangs. ``asyncio.timeout`` has no such race.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; False when the time ran out."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """``await awaitable``, raising TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        return await awaitable


def raise_if_cancelled() -> None:
    """In an ``except Exception`` of a loop that outlives failures: re-raise a cancellation
    that a library turned into an ordinary error (aiomqtt waits with ``asyncio.wait_for``,
    which on 3.11 can lose a cancellation that races its result). Without this the loop
    carries on, and the shutdown that cancelled it waits forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
