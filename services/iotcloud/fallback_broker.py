"""An in-process MQTT broker (amqtt) for machines without Mosquitto or its auth plugin,
with the same rules as the plugin (``broker/iotcloud_auth.c``).

``iotcloud up`` runs it as its broker child when ``MQTT_URL`` is unset and Mosquitto or the
plugin is not there. The database is the truth here too: a device logs in with user name =
client id = its device id and password = its provision token, whose SHA-256 the
``broker_credentials`` view holds; the services log in with the secret in the broker's
``service.secret`` and client ids that start with ``SERVICE_CLIENT_PREFIX``. A device may
publish only its own reports and subscribe to and receive only its own topic trees. A
rotated or deleted credential cuts the session (``LISTEN iot_broker_credentials``), and
connects and disconnects are recorded as presence, as the plugin does.

Limits, fine for one machine: retained messages and persistent sessions live in memory
(the desired publisher fills a fresh broker after a reconnect), and a ``$share/...``
subscription is served as a plain one, so run one ``ingest_iot`` against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from shared import db
from shared.aio import within
from shared.ids import DEVICE_ID_RE
from shared.mqtt import SERVICE_CLIENT_PREFIX
from shared.topics import device_prefix, parse_aws_request, parse_named_reported

log = logging.getLogger(__name__)

_SHARE_PREFIX = "$share/"
_MAX_PASSWORD = 512
_PRESENCE_INTERVAL_S = 0.2

# The broker's only query, the one the plugin makes.
_DEVICE_LOGIN = "SELECT tenant_id, password_hash FROM broker_credentials WHERE username = $1"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a session logged in as; ``device_id`` None is the service."""

    device_id: str | None = None
    tenant_id: str | None = None

    def allows(self, topic: str, action: Action) -> bool:
        if self.device_id is None or self.tenant_id is None:
            return True
        prefix = device_prefix(self.tenant_id, self.device_id)
        aws = f"$aws/things/{self.device_id}/shadow/"
        if action == Action.PUBLISH:
            # The plugin's rule (broker/iotcloud_auth.c): its reports, classic or named, and
            # its own AWS shadow requests (SPEC §9).
            if topic == prefix + "reported":
                return True
            named = parse_named_reported(topic)
            if named is not None:
                return named[:2] == (self.tenant_id, self.device_id)
            request = parse_aws_request(topic)
            return request is not None and request[0] == self.device_id
        # A filter under the device's own prefix can only match its own topics.
        return topic.startswith((prefix, f"tenant/+/device/{self.device_id}/shadow/", aws))


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
        self.name = f"{socket.gethostname()}:{port}/{secrets.token_hex(6)}"
        self.identities: dict[str, Identity] = {}
        self.presence: list[dict[str, Any]] = []
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
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch_credentials(), name="broker-credentials")
                tasks.create_task(self._write_presence(), name="broker-presence")
        finally:
            await self.shutdown()
            await self.pool.close()

    async def login(
        self, username: str | None, password: str | None, client_id: str
    ) -> Identity | None:
        if not username or password is None or len(password) > _MAX_PASSWORD:
            return None
        offered = hashlib.sha256(password.encode()).hexdigest()
        if username == self.service_user:
            expected = hashlib.sha256(self.service_password.encode()).hexdigest()
            if hmac.compare_digest(offered, expected) and client_id.startswith(
                SERVICE_CLIENT_PREFIX
            ):
                return Identity()
            return None
        if client_id != username or not DEVICE_ID_RE.fullmatch(username):
            return None
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_DEVICE_LOGIN, username)
        if row is None or not hmac.compare_digest(offered, row["password_hash"]):
            return None
        return Identity(username, row["tenant_id"])

    def record_presence(self, device_id: str, *, connected: bool) -> None:
        self.presence.append({"d": device_id, "c": connected, "t": int(time.time() * 1000)})

    async def kick(self, username: str) -> None:
        for session, handler in list(self._sessions.values()):
            if session.username == username and session.transitions.is_connected():
                log.info("cutting the session of %s", username)
                await handler.handle_connection_closed()

    async def _watch_credentials(self) -> None:
        """Cut the session of every credential the database changes or removes."""
        changed: asyncio.Queue[str] = asyncio.Queue()
        while True:
            try:
                conn = await db.connect(self.database_url, application_name="iotcloud-broker")
                try:
                    await conn.add_listener(
                        "iot_broker_credentials", lambda *args: changed.put_nowait(args[3])
                    )
                    while True:
                        try:
                            device_id = await within(changed.get(), 5.0)
                        except TimeoutError:
                            await conn.fetchval("SELECT 1")  # notice a dead LISTEN connection
                            continue
                        if self.identities.pop(device_id, None) is not None:
                            self.record_presence(device_id, connected=False)
                        await self.kick(device_id)
                finally:
                    conn.terminate()
            except db.RETRYABLE_ERRORS as exc:
                log.warning("credential watch waits for the database: %r", exc)
                await asyncio.sleep(1)

    async def _write_presence(self) -> None:
        started = False
        while True:
            await asyncio.sleep(_PRESENCE_INTERVAL_S)
            batch: list[dict[str, Any]] = []
            try:
                async with self.pool.acquire() as conn:
                    if not started:
                        await conn.execute("SELECT broker_started($1)", self.name)
                        started = True
                    if self.presence:
                        batch, self.presence = self.presence, []
                        await conn.execute("SELECT broker_presence($1, $2)", self.name, batch)
            except db.RETRYABLE_ERRORS as exc:
                self.presence[:0] = batch  # kept, in order, for the next attempt
                log.warning("presence not written yet, database unavailable: %r", exc)
            except Exception:  # a batch that cannot be written would block all the others
                log.exception("presence of %d events dropped", len(batch))

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


class DeviceAccessPlugin(BaseAuthPlugin, BaseTopicPlugin):  # type: ignore[misc]
    """Authentication, topic checks and presence: the rules of the Mosquitto plugin."""

    @property
    def broker(self) -> FallbackBroker:
        broker: FallbackBroker = self.context._broker_instance
        return broker

    async def authenticate(self, *, session: Session) -> bool | None:
        client_id = session.client_id or ""
        try:
            identity = await self.broker.login(session.username, session.password, client_id)
        except db.UNAVAILABLE_ERRORS as exc:
            log.warning("login of %s refused, database unavailable: %r", session.username, exc)
            return False
        if identity is None:
            log.info("refused login for %r", session.username)
            return False
        self.broker.identities[client_id] = identity
        if identity.device_id is not None:
            self.broker.record_presence(identity.device_id, connected=True)
        return True

    async def on_broker_client_disconnected(self, client_id: str, client_session: Session) -> None:
        identity = self.broker.identities.get(client_id)
        if identity is not None and identity.device_id is not None:
            self.broker.record_presence(identity.device_id, connected=False)

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
