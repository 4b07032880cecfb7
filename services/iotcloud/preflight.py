"""``iotcloud-start``: what a container of deploy/Containerfile runs (docs/deploy.md).

``iotcloud-start ui|ingest`` checks the settings, waits for the database, applies the
migrations (safe when replicas start together: db.migrate holds an advisory lock) and then
becomes ``iotcloud serve``. ``iotcloud-start bootstrap`` creates the first tenant and its
admin from the environment, once; ``iotcloud-start migrate`` only migrates.

Whatever stops a start (a missing or example secret, a file that cannot be read, a port in
use, a database that does not answer) is one line on stderr naming the setting, and a
non-zero exit: 2 for a setting to fix, 1 for a database that did not answer in time.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
import time
from collections.abc import Mapping, MutableMapping
from urllib.parse import quote, urlsplit

import asyncpg

from shared import db
from shared.settings import Settings, SettingsError, env_int, env_port

ROLES = {"ui": "ui_iot", "ingest": "ingest_iot", "bootstrap": "bootstrap", "migrate": "migrate"}
EXAMPLE_PREFIX = "change-me"  # what deploy/.env.example's secrets start with
SERVICE_USER = "$iotcloud-service"
MIN_ADMIN_PASSWORD = 12


class PreflightError(Exception):
    """Start-up cannot go on; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def secret(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise PreflightError(f"{name} is not set (see deploy/.env.example)")
    if value.startswith(EXAMPLE_PREFIX):
        raise PreflightError(
            f"{name} still has the example value of deploy/.env.example; "
            "set a random one (openssl rand -hex 32)"
        )
    return value


def complete_env(env: MutableMapping[str, str]) -> None:
    """DATABASE_URL and MQTT_URL from their parts (POSTGRES_*, IOTCLOUD_BROKER_*) if unset."""
    if not env.get("DATABASE_URL"):
        password = secret(env, "POSTGRES_PASSWORD")
        user = env.get("POSTGRES_USER") or "iot"
        host = env.get("POSTGRES_HOST") or "iot-postgres"
        port = env_port("POSTGRES_PORT", 5432, environ=env)
        name = env.get("POSTGRES_DB") or "iotcloud"
        env["DATABASE_URL"] = (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
            f"{quote(name, safe='')}"
        )
    if not env.get("MQTT_URL"):
        password = secret(env, "IOTCLOUD_BROKER_SERVICE_PASSWORD")
        host = env.get("IOTCLOUD_BROKER_HOST") or "iot-mosquitto"
        port = env_port("IOTCLOUD_BROKER_PORT", 1883, environ=env)
        env["MQTT_URL"] = (
            f"mqtt://{quote(SERVICE_USER, safe='')}:{quote(password, safe='')}@{host}:{port}"
        )


def check_port(host: str, port: int, setting: str) -> None:
    """The port is free to listen on (a clear line now, not uvicorn's at bind time)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PreflightError(
                    f"port {port} ({setting}) on {host} is already in use"
                ) from None
            raise PreflightError(
                f"cannot listen on {host}:{port} ({setting}): {exc.strerror}"
            ) from None


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}"


async def connect(url: str, wait_s: int, application_name: str) -> asyncpg.Connection:
    """A connection, retried for up to ``wait_s`` seconds while the server is not there yet."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await db.connect(url, application_name=application_name)
        except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError):
            raise PreflightError(
                f"the database at {_where(url)} refused the login of the URL's user: "
                "check POSTGRES_USER and POSTGRES_PASSWORD"
            ) from None
        except db.RETRYABLE_ERRORS as exc:
            if time.monotonic() >= deadline:
                reason = (
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                )
                raise PreflightError(
                    f"the database at {_where(url)} did not answer within {wait_s} s "
                    f"(IOTCLOUD_DB_WAIT_S): {reason}",
                    code=1,
                ) from None
            await asyncio.sleep(1)


async def migrate(url: str, wait_s: int, application_name: str) -> list[str]:
    conn = await connect(url, wait_s, application_name)
    try:
        return await db.migrate(conn)
    except asyncpg.PostgresError as exc:
        raise PreflightError(f"a migration failed: {exc}", code=1) from None
    finally:
        await conn.close()


async def bootstrap(env: Mapping[str, str], wait_s: int) -> str:
    """The first tenant and its admin, once; a second run reports and changes nothing."""
    from shared.ids import is_tenant_id
    from shared.repositories import tenants, users
    from shared.security import hash_password

    tenant = env.get("IOTCLOUD_BOOTSTRAP_TENANT", "")
    if not is_tenant_id(tenant):
        raise PreflightError(
            "IOTCLOUD_BOOTSTRAP_TENANT must be a tenant id ([a-z0-9][a-z0-9-]{0,62}), "
            f"got {tenant!r}"
        )
    email = env.get("IOTCLOUD_BOOTSTRAP_ADMIN_EMAIL", "")
    if "@" not in email:
        raise PreflightError(f"IOTCLOUD_BOOTSTRAP_ADMIN_EMAIL must be an e-mail, got {email!r}")
    password = secret(env, "IOTCLOUD_BOOTSTRAP_ADMIN_PASSWORD")
    if len(password) < MIN_ADMIN_PASSWORD:
        raise PreflightError(
            f"IOTCLOUD_BOOTSTRAP_ADMIN_PASSWORD must be at least {MIN_ADMIN_PASSWORD} characters"
        )
    url = env["DATABASE_URL"]
    await migrate(url, wait_s, "iotcloud-bootstrap")
    conn = await connect(url, wait_s, "iotcloud-bootstrap")
    try:
        async with conn.transaction():
            created_tenant = await tenants.insert(
                conn, tenant, env.get("IOTCLOUD_BOOTSTRAP_TENANT_NAME") or tenant
            )
            if await users.by_email(conn, email) is not None:
                return f"tenant {tenant} and {email} exist already; nothing to do"
            await users.insert(
                conn,
                tenant_id=tenant,
                email=email,
                password_hash=hash_password(password),
                role="admin",
            )
    finally:
        await conn.close()
    made = "created tenant" if created_tenant else "tenant"
    return f"{made} {tenant} with admin {email}"


def prepare(role: str, env: MutableMapping[str, str]) -> list[str]:
    """Check and migrate; returns the command to exec (empty: nothing more to run)."""
    complete_env(env)
    wait_s = env_int("IOTCLOUD_DB_WAIT_S", 60, minimum=0, environ=env)
    if role == "bootstrap":
        print(f"bootstrap: {asyncio.run(bootstrap(env, wait_s))}", flush=True)
        return []
    if role == "migrate":
        applied = asyncio.run(migrate(env["DATABASE_URL"], wait_s, "iotcloud-migrate"))
        print(f"migrate: applied {len(applied)} migration(s)", flush=True)
        return []
    name = ROLES[role]
    secret(env, "IOTCLOUD_JWT_SECRET")
    settings = Settings.from_env(application=name, environ=env)  # every setting, checked
    host = env.get("IOTCLOUD_BIND") or "0.0.0.0"
    port, setting = (
        (settings.ui_port, "UI_PORT") if role == "ui" else (settings.ingest_port, "INGEST_PORT")
    )
    check_port(host, port, setting)
    applied = asyncio.run(migrate(settings.database_url, wait_s, f"{name}-migrate"))
    if applied:
        print(f"{name}: applied {len(applied)} migration(s)", flush=True)
    return ["iotcloud", "serve", role, "--host", host, "--port", str(port)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ROLES:
        print(f"usage: iotcloud-start {{{','.join(ROLES)}}}", file=sys.stderr)
        return 2
    role = args[0]
    env = dict(os.environ)
    try:
        command = prepare(role, env)
    except (PreflightError, SettingsError, ValueError) as exc:
        message = str(exc)  # Settings' own errors already start with the service's name
        prefix = f"{ROLES[role]}: "
        print(message if message.startswith(prefix) else prefix + message, file=sys.stderr)
        return exc.code if isinstance(exc, PreflightError) else 2
    except Exception as exc:  # one line, never a traceback, at start-up
        print(f"{ROLES[role]}: start-up failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if command:
        os.execvpe(command[0], command, env)  # noqa: S606 - becomes the service, no shell
    return 0


def cli_main() -> int:
    """The image's ``iotcloud``: the CLI, with DATABASE_URL and MQTT_URL from their parts,
    so ``docker exec ui_iot iotcloud device create ...`` reaches the deployment's database."""
    from iotcloud import cli

    try:
        complete_env(os.environ)
    except (PreflightError, SettingsError) as exc:
        print(f"iotcloud: {exc}", file=sys.stderr)
        return 2
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
