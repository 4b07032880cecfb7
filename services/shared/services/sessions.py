"""Whether an operator's token still stands: revocation on every replica within a second.

A token names its user and the user's ``token_version`` at issue. Each ``ui_iot`` process
keeps the state of the users it has seen (role, disabled, token_version) in memory, so the
request path checks a token with a dictionary lookup, and LISTENs on ``iot_user_changed``
(a trigger on ``users``) to forget a user the moment that state changes anywhere. While the
LISTEN connection is down nothing is kept: every request reads the user's row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared import db
from shared.aio import raise_if_cancelled, wait_event
from shared.mqtt import backoff_delays
from shared.repositories import users as users_repo
from shared.security import Principal, Role

log = logging.getLogger(__name__)

CHANNEL = "iot_user_changed"
MAX_KNOWN_USERS = 20_000
_SAFETY_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class UserState:
    tenant_id: str
    role: Role
    disabled: bool
    token_version: int


class UserStates:
    def __init__(self, pool: asyncpg.Pool, database_url: str) -> None:
        self._pool = pool
        self._database_url = database_url
        # user id -> state; None: the user no longer exists.
        self._known: dict[int, UserState | None] = {}
        self._generation = 0
        self._listening = False
        self._watchers: dict[int, set[asyncio.Event]] = {}
        self._loading: dict[int, asyncio.Future[UserState | None]] = {}

    def current(self, who: Principal) -> Principal | bool | None:
        """The principal as it stands now (with the user's current role), None when the
        token is revoked, or False when this process does not know the user yet."""
        state = self._known.get(who.user_id, False)
        if state is False:
            return False
        if state is not None and who.version > state.token_version:  # type: ignore[union-attr]
            # A token newer than what this process holds (issued on another replica, or
            # here before the change's NOTIFY came back): the cached row is the stale one.
            return False
        return _judge(who, state)  # type: ignore[arg-type]

    async def check(self, who: Principal) -> Principal | None:
        """:meth:`current`, reading the user's row when it is not known (once for all the
        requests of that user waiting at the moment: a burst after a NOTIFY is one query)."""
        known = self.current(who)
        if known is not False:
            return known  # type: ignore[return-value]
        loading = self._loading.get(who.user_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load(who.user_id))
            self._loading[who.user_id] = loading
            loading.add_done_callback(lambda done: self._done_loading(who.user_id, done))
        return _judge(who, await asyncio.shield(loading))

    async def _load(self, user_id: int) -> UserState | None:
        generation = self._generation
        row = await users_repo.token_state(self._pool, user_id)
        state = (
            UserState(row["tenant_id"], row["role"], row["disabled"], row["token_version"])
            if row is not None
            else None
        )
        # Kept only if no change was announced while we read: else it may be the old row.
        if self._listening and generation == self._generation:
            if len(self._known) >= MAX_KNOWN_USERS:
                self._known.clear()
            self._known[user_id] = state
        return state

    def _done_loading(self, user_id: int, done: asyncio.Future[UserState | None]) -> None:
        if self._loading.get(user_id) is done:
            del self._loading[user_id]

    def forget(self, user_id: int) -> None:
        """Drop what this process knows of the user now, as the NOTIFY will (a change made
        through this process is then seen by the very next request, whatever the NOTIFY's
        delay; other processes see it when the NOTIFY arrives)."""
        self._forget(user_id)

    def _forget(self, user_id: int) -> None:
        self._generation += 1
        self._known.pop(user_id, None)
        # A read begun before the change may return the old row: later requests read anew.
        self._loading.pop(user_id, None)
        for event in self._watchers.get(user_id, ()):
            event.set()

    def _forget_all(self) -> None:
        self._generation += 1
        self._known.clear()
        self._loading.clear()
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if isinstance(payload, str) and payload.isdigit():
            self._forget(int(payload))
        else:
            self._forget_all()

    def watch(self, user_id: int) -> asyncio.Event:
        """An event set when the user's state may have changed (for long-lived streams);
        hand it back to :meth:`unwatch`."""
        event = asyncio.Event()
        self._watchers.setdefault(user_id, set()).add(event)
        return event

    def unwatch(self, user_id: int, event: asyncio.Event) -> None:
        watchers = self._watchers.get(user_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                del self._watchers[user_id]

    async def run(self) -> None:
        next_delay = backoff_delays()
        while True:
            try:
                await self._listen()
            except db.RETRYABLE_ERRORS as exc:
                log.warning("user-state listener lost the database: %r", exc)
            except Exception:
                raise_if_cancelled()
                log.exception("user-state listener failed unexpectedly, restarting it")
            finally:
                self._listening = False
                self._forget_all()
            await asyncio.sleep(next_delay())

    async def _listen(self) -> None:
        conn = await db.connect(self._database_url, application_name="ui_iot-users")
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
            # Whatever changed before this LISTEN began may have been missed.
            self._forget_all()
            self._listening = True
            idle = asyncio.Event()
            while True:
                await wait_event(idle, _SAFETY_INTERVAL_S)
                await conn.fetchval("SELECT 1")  # notice a dead LISTEN connection
        finally:
            self._listening = False
            conn.terminate()


def _judge(who: Principal, state: UserState | None) -> Principal | None:
    if (
        state is None
        or state.disabled
        or state.token_version != who.version
        or state.tenant_id != who.tenant_id
    ):
        return None
    if state.role != who.role:
        return dataclasses.replace(who, role=state.role)
    return who


async def until_revoked(
    stream: AsyncIterator[bytes], states: UserStates, who: Principal
) -> AsyncIterator[bytes]:
    """``stream`` while the user's token stands; ends it once the token is revoked."""
    changed = states.watch(who.user_id)
    next_chunk: asyncio.Future[bytes] | None = None
    try:
        while True:
            if next_chunk is None:
                next_chunk = asyncio.ensure_future(anext(stream))
            waiting: asyncio.Future[Any] = asyncio.ensure_future(changed.wait())
            try:
                await asyncio.wait([next_chunk, waiting], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
            if next_chunk.done():
                done, next_chunk = next_chunk, None
                try:
                    chunk = done.result()
                except StopAsyncIteration:
                    return
                yield chunk
                continue
            changed.clear()
            if await states.check(who) is None:
                return
    finally:
        states.unwatch(who.user_id, changed)
        if next_chunk is not None and not next_chunk.done():
            next_chunk.cancel()
            await asyncio.wait({next_chunk})
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
