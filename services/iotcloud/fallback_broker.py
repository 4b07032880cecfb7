"""An in-process MQTT broker (amqtt) for machines without Mosquitto, with the same rules.

``iotcloud up`` runs it as its broker child when ``MQTT_URL`` is unset and Mosquitto is not
installed. The database is the truth here too: a device logs in with its provision token,
checked against the broker credential the database keeps for it (PBKDF2-SHA512, exactly as
Mosquitto's dynamic-security file stores it); the services log in with the secret in
``.iotcloud/broker/service.secret``. A device may publish only its own ``.../shadow/reported``
and subscribe to and receive only its own ``.../shadow/#``.

The services drive it exactly as they drive Mosquitto: it answers the dynamic-security
commands they send on ``$CONTROL/dynamic-security/v1``. Accounts live in the database, so
those commands only cut sessions (password change, disable, delete); a sweep every few
seconds also cuts any session whose credential the database no longer holds.

Limits, fine for one machine: retained messages and persistent sessions live in memory
(the desired publisher republishes everything after a reconnect), and a ``$share/...``
subscription is served as a plain one, so run one ``ingest_iot`` against it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import os
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from shared import db
from shared.dynsec import CONTROL_TOPIC, RESPONSE_TOPIC, broker_credential
from shared.topics import device_prefix

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 3.0
_SHARE_PREFIX = "$share/"
_KICKING_COMMANDS = {"setClientPassword", "disableClient", "deleteClient"}
_ACCEPTED_COMMANDS = _KICKING_COMMANDS | {
    "createClient",
    "createRole",
    "deleteRole",
    "enableClient",
    "listClients",
}

# The broker's only queries, kept here because nothing else uses them.
_DEVICE_LOGIN = """SELECT tenant_id, broker_salt, broker_hash FROM devices
                   WHERE device_id = $1 AND revoked_at IS NULL"""
_LIVE_DEVICES = "SELECT device_id FROM devices WHERE revoked_at IS NULL"
_LIVE_CREDENTIALS = """SELECT device_id, broker_hash FROM devices
                       WHERE device_id = ANY($1::text[]) AND revoked_at IS NULL"""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a session logged in as; ``device_id`` None is the service."""

    device_id: str | None = None
    tenant_id: str | None = None
    password_hash: str | None = None

    def allows(self, topic: str, action: Action) -> bool:
        if self.device_id is None or self.tenant_id is None:
            return True
        prefix = device_prefix(self.tenant_id, self.device_id)
        if action == Action.PUBLISH:
            return topic == prefix + "reported"
        # A filter under the device's own prefix can only match its own topics.
        return topic.startswith(prefix)


class FallbackBroker(Broker):  # type: ignore[misc]  # amqtt ships no type hints
    def __init__(self, *, port: int, database_url: str, service_user: str, service_password: str):
        super().__init__(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                "plugins": {f"{__name__}.DeviceAccessPlugin": {}},
            }
        )
        self.database_url = database_url
        self.service_user = service_user
        self.service_password = service_password
        self.identities: dict[str, Identity] = {}
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "serve() creates the pool"
        return self._pool

    async def serve(self) -> None:
        """Run until cancelled."""
        self._pool = await db.create_pool(
            self.database_url, application_name="iotcloud-broker", max_size=4
        )
        await self.start()
        try:
            while True:
                await asyncio.sleep(SWEEP_INTERVAL_S)
                try:
                    await self._sweep()
                except db.RETRYABLE_ERRORS as exc:
                    log.warning("session sweep skipped, database unavailable: %r", exc)
        finally:
            await self.shutdown()
            await self.pool.close()

    async def login(self, username: str | None, password: str | None) -> Identity | None:
        if not username or password is None:
            return None
        if username == self.service_user:
            ok = hmac.compare_digest(password.encode(), self.service_password.encode())
            return Identity() if ok else None
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_DEVICE_LOGIN, username)
        if row is None:
            return None
        offered = broker_credential(password, salt=base64.b64decode(row["broker_salt"]))
        if not hmac.compare_digest(offered.password_hash, row["broker_hash"]):
            return None
        return Identity(username, row["tenant_id"], row["broker_hash"])

    async def kick(self, username: str) -> None:
        for session, handler in list(self._sessions.values()):
            if session.username == username and session.transitions.is_connected():
                log.info("cutting the session of %s", username)
                await handler.handle_connection_closed()

    async def _sweep(self) -> None:
        """Cut sessions whose credential the database no longer holds (rotated, deleted)."""
        connected = {
            session.client_id: identity
            for session, _ in self._sessions.values()
            if session.transitions.is_connected()
            and (identity := self.identities.get(session.client_id)) is not None
            and identity.device_id is not None
        }
        if not connected:
            return
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                _LIVE_CREDENTIALS, [identity.device_id for identity in connected.values()]
            )
        current = {row["device_id"]: row["broker_hash"] for row in rows}
        for identity in connected.values():
            assert identity.device_id is not None
            if current.get(identity.device_id) != identity.password_hash:
                await self.kick(identity.device_id)

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        topic_filter, qos = subscription
        if topic_filter.startswith(_SHARE_PREFIX):
            # "$share/<group>/<filter>": served as a plain subscription to <filter>.
            parts = topic_filter.split("/", 2)
            if len(parts) < 3:
                return 0x80
            topic_filter = parts[2]
        granted: int = await super().add_subscription((topic_filter, qos), session)
        return granted

    async def _handle_message_delivery(
        self, client_session: Session, handler: Any, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        message = wait_deliver.result()
        if message is not None and message.topic == CONTROL_TOPIC:
            identity = self.identities.get(client_session.client_id or "")
            if identity is None or identity.device_id is not None:
                return False  # only the service may send control commands
            await self._control(bytes(message.data or b""))
            return True
        delivered: bool = await super()._handle_message_delivery(
            client_session, handler, wait_deliver
        )
        return delivered

    async def _control(self, payload: bytes) -> None:
        """Answer dynamic-security commands the way Mosquitto does."""
        try:
            commands = orjson.loads(payload)["commands"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("unreadable control message")
            return
        responses: list[dict[str, Any]] = []
        for command in commands:
            name = command.get("command")
            response: dict[str, Any] = {"command": name}
            if "correlationData" in command:
                response["correlationData"] = command["correlationData"]
            if name not in _ACCEPTED_COMMANDS:
                response["error"] = "Unknown command"
            elif name in _KICKING_COMMANDS:
                await self.kick(str(command.get("username", "")))
            elif name == "listClients":
                try:
                    response["data"] = {"clients": await self._accounts()}
                except db.RETRYABLE_ERRORS as exc:
                    response["error"] = f"database unavailable: {exc!r}"
            responses.append(response)
        await self._broadcast_message(None, RESPONSE_TOPIC, orjson.dumps({"responses": responses}))

    async def _accounts(self) -> list[str]:
        """What Mosquitto would list: every live device, and whoever is still connected."""
        async with self.pool.acquire() as conn:
            live = {row["device_id"] for row in await conn.fetch(_LIVE_DEVICES)}
        connected = {
            identity.device_id
            for session, _ in self._sessions.values()
            if session.transitions.is_connected()
            and (identity := self.identities.get(session.client_id)) is not None
            and identity.device_id is not None
        }
        return sorted(live | connected)


class DeviceAccessPlugin(BaseAuthPlugin, BaseTopicPlugin):  # type: ignore[misc]
    """Authentication and topic checks: the per-device rules of the dynamic-security roles."""

    @property
    def broker(self) -> FallbackBroker:
        broker: FallbackBroker = self.context._broker_instance
        return broker

    async def authenticate(self, *, session: Session) -> bool | None:
        try:
            identity = await self.broker.login(session.username, session.password)
        except db.UNAVAILABLE_ERRORS as exc:
            log.warning("login of %s refused, database unavailable: %r", session.username, exc)
            return False
        if identity is None:
            log.info("refused login for %r", session.username)
            return False
        self.broker.identities[session.client_id or ""] = identity
        return True

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        if session is None or topic is None or action is None:
            return False
        identity = self.broker.identities.get(session.client_id or "")
        return identity is not None and identity.allows(topic, action)


async def run_fallback_broker() -> None:
    from iotcloud import cli
    from iotcloud.embedded import SERVICE_USER

    database_url = os.environ.get("DATABASE_URL") or cli.database_url()
    embedded = cli.embedded_broker()
    broker = FallbackBroker(
        port=embedded.port,
        database_url=database_url,
        service_user=SERVICE_USER,
        service_password=embedded.service_password(),
    )
    print(f"iotcloud: in-process MQTT broker on 127.0.0.1:{embedded.port}", flush=True)
    await broker.serve()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_fallback_broker())
