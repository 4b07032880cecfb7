"""Mosquitto dynamic-security: device broker accounts, the control API, the account file.

Each device gets its own client (user name = device id, password = provision token) and its
own role, because Mosquitto 2.0's dynamic security does not expand ``%u`` in ACLs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiomqtt
import orjson

from shared.aio import within
from shared.topics import device_prefix

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
SERVICE_ROLE = "iotcloud-service"
ADMIN_ROLE = "admin"
PBKDF2_ITERATIONS = 101  # Mosquitto 2.0's own choice; the secret itself carries 256 random bits


@dataclass(frozen=True, slots=True)
class BrokerCredential:
    salt: str
    password_hash: str


def broker_credential(password: str, *, salt: bytes | None = None) -> BrokerCredential:
    """The credential exactly as Mosquitto's dynamic-security file stores it."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return BrokerCredential(base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


def device_role_name(device_id: str) -> str:
    return f"device:{device_id}"


def device_acls(tenant_id: str, device_id: str) -> list[dict[str, Any]]:
    prefix = device_prefix(tenant_id, device_id)
    # Subscribing with "+" for the tenant (as the acceptance script does) is allowed: device
    # ids are global, and publishClientReceive still delivers only this device's own topics.
    any_tenant = f"tenant/+/device/{device_id}/shadow/#"
    return [
        {"acltype": "publishClientSend", "topic": prefix + "reported", "allow": True},
        {"acltype": "subscribePattern", "topic": prefix + "#", "allow": True},
        {"acltype": "subscribePattern", "topic": any_tenant, "allow": True},
        {"acltype": "publishClientReceive", "topic": prefix + "#", "allow": True},
        {"acltype": "unsubscribePattern", "topic": prefix + "#", "allow": True},
    ]


SERVICE_ACLS: list[dict[str, Any]] = [
    {"acltype": "publishClientSend", "topic": "tenant/#", "allow": True},
    {"acltype": "publishClientReceive", "topic": "tenant/#", "allow": True},
    {"acltype": "subscribePattern", "topic": "tenant/#", "allow": True},
    {"acltype": "subscribePattern", "topic": "$share/#", "allow": True},
    {"acltype": "unsubscribePattern", "topic": "#", "allow": True},
    {"acltype": "publishClientSend", "topic": CONTROL_TOPIC + "/#", "allow": True},
    {"acltype": "publishClientSend", "topic": CONTROL_TOPIC, "allow": True},
    {"acltype": "publishClientReceive", "topic": "$CONTROL/dynamic-security/#", "allow": True},
    {"acltype": "subscribePattern", "topic": "$CONTROL/dynamic-security/#", "allow": True},
]


@dataclass(frozen=True, slots=True)
class DeviceAccount:
    device_id: str
    tenant_id: str
    credential: BrokerCredential


def render_config(
    *, service_user: str, service_credential: BrokerCredential, devices: Iterable[DeviceAccount]
) -> dict[str, Any]:
    """A whole dynamic-security file: the service account plus one client and role per device."""
    clients: list[dict[str, Any]] = [
        {
            "username": service_user,
            "textName": "iotcloud service",
            "password": service_credential.password_hash,
            "salt": service_credential.salt,
            "iterations": PBKDF2_ITERATIONS,
            "roles": [{"rolename": SERVICE_ROLE}],
        }
    ]
    roles: list[dict[str, Any]] = [{"rolename": SERVICE_ROLE, "acls": SERVICE_ACLS}]
    for device in devices:
        role = device_role_name(device.device_id)
        clients.append(
            {
                "username": device.device_id,
                "password": device.credential.password_hash,
                "salt": device.credential.salt,
                "iterations": PBKDF2_ITERATIONS,
                "roles": [{"rolename": role}],
            }
        )
        roles.append({"rolename": role, "acls": device_acls(device.tenant_id, device.device_id)})
    return {
        "clients": clients,
        "roles": roles,
        "groups": [],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": False,
        },
    }


class DynSecError(RuntimeError):
    pass


class DynSecClient:
    """Commands over ``$CONTROL/dynamic-security/v1`` on an already connected service client.

    The caller must have subscribed the client to :data:`RESPONSE_TOPIC` and route messages
    on it to :meth:`handle_response`.
    """

    def __init__(self, client: aiomqtt.Client, *, timeout: float = 5.0) -> None:
        self._client = client
        self._timeout = timeout
        self._waiting: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}

    def handle_response(self, payload: bytes) -> None:
        try:
            responses = orjson.loads(payload)["responses"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("unreadable dynamic-security response")
            return
        for response in responses:
            future = self._waiting.pop(str(response.get("correlationData", "")), None)
            if future is not None and not future.done():
                future.set_result([response])

    async def run_many(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands in one control message; returns their responses in order."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[list[dict[str, Any]]]] = []
        tagged = []
        for command in commands:
            correlation = uuid.uuid4().hex
            future: asyncio.Future[list[dict[str, Any]]] = loop.create_future()
            self._waiting[correlation] = future
            futures.append(future)
            tagged.append({**command, "correlationData": correlation})
        try:
            await self._client.publish(CONTROL_TOPIC, orjson.dumps({"commands": tagged}), qos=1)
            results = await within(asyncio.gather(*futures), self._timeout)
        finally:
            for command in tagged:
                self._waiting.pop(command["correlationData"], None)
        return [result[0] for result in results]

    async def run(self, command: dict[str, Any]) -> dict[str, Any]:
        (response,) = await self.run_many([command])
        error = response.get("error")
        if error:
            raise DynSecError(f"{command['command']}: {error}")
        return response

    async def upsert_devices(self, devices: list[tuple[str, str, str]]) -> None:
        """Create or re-password many devices from (tenant_id, device_id, password).

        Each gets createRole, createClient and setClientPassword in one batch: the first two
        fail harmlessly for a device that exists, the last makes its password current.
        """
        commands: list[dict[str, Any]] = []
        for tenant_id, device_id, password in devices:
            role = device_role_name(device_id)
            commands += [
                {
                    "command": "createRole",
                    "rolename": role,
                    "acls": device_acls(tenant_id, device_id),
                },
                {
                    "command": "createClient",
                    "username": device_id,
                    "password": password,
                    "roles": [{"rolename": role}],
                },
                {"command": "setClientPassword", "username": device_id, "password": password},
            ]
        for start in range(0, len(commands), 300):
            for response in await self.run_many(commands[start : start + 300]):
                error = response.get("error")
                if error and "already exists" not in error:
                    raise DynSecError(f"{response.get('command')}: {error}")

    async def upsert_device(self, *, tenant_id: str, device_id: str, password: str) -> None:
        """Create the device's account or change its password, ending any session on the old one."""
        await self.upsert_devices([(tenant_id, device_id, password)])
        await self.run_many(
            [
                {"command": "disableClient", "username": device_id},
                {"command": "enableClient", "username": device_id},
            ]
        )

    async def delete_device(self, device_id: str) -> None:
        """Remove the client (which also cuts its live session) and its role."""
        for command in (
            {"command": "deleteClient", "username": device_id},
            {"command": "deleteRole", "rolename": device_role_name(device_id)},
        ):
            try:
                await self.run(command)
            except DynSecError as exc:
                if "not found" not in str(exc).lower():
                    raise

    async def list_clients(self) -> list[str]:
        response = await self.run({"command": "listClients", "verbose": False})
        clients: list[str] = response.get("data", {}).get("clients", [])
        return clients


@asynccontextmanager
async def dynsec_session(
    host: str, port: int, username: str | None, password: str | None
) -> AsyncIterator[DynSecClient]:
    """A short-lived control connection, for command-line tools."""
    async with aiomqtt.Client(
        host,
        port,
        username=username,
        password=password,
        identifier=f"iotcloud-ctl-{uuid.uuid4().hex[:8]}",
    ) as client:
        await client.subscribe(RESPONSE_TOPIC, qos=1)
        dynsec = DynSecClient(client)

        async def pump() -> None:
            async for message in client.messages:
                if isinstance(message.payload, bytes):
                    dynsec.handle_response(message.payload)

        async with asyncio.TaskGroup() as tasks:
            pumping = tasks.create_task(pump(), name="dynsec-responses")
            try:
                yield dynsec
            finally:
                pumping.cancel()
