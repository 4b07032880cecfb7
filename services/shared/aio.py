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
