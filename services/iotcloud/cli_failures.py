"""Every way an ``iotcloud`` command can fail, as one line a person can act on.

The command line never prints a traceback unless ``IOTCLOUD_DEBUG=1``: a database that is
down or missing, a broker that does not answer, a refused setting or id all become one line
on standard error and exit status 2.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import asyncpg

from shared.settings import env_flag

# What a person reads about the ids the CLI takes (shared.ids has the rules themselves).
TENANT_ID_WORDS = (
    "a tenant id is 1 to 63 lower-case letters, digits or '-', starting with a letter or digit"
)
DEVICE_ID_WORDS = (
    "a device id is 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a letter "
    "or digit (no '/', '+', '#' or spaces: it is part of MQTT topics and the device's "
    "broker login)"
)


def debug() -> bool:
    return env_flag("IOTCLOUD_DEBUG")


def _where(url: str | None) -> str:
    """host:port/db of a URL, without credentials."""
    if not url:
        return "the database"
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "the database"
    name = parts.path.lstrip("/")
    return f"{host}:{port}" + (f"/{name}" if name else "")


def database_failure(exc: BaseException, url: str | None) -> str | None:
    """The line for a database that cannot be used, or None when it is something else."""
    where = _where(url)
    source = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "the embedded database"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (
            f"database {where} does not exist ({source}); create it (createdb) or point "
            "DATABASE_URL at one that does"
        )
    if isinstance(
        exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
    ):
        return f"the database at {where} refused the login ({source}): {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"cannot reach the database at {where} ({source}): connection refused; is "
            "PostgreSQL running?"
        )
    if isinstance(exc, TimeoutError):
        return f"the database at {where} did not answer in time ({source})"
    if isinstance(exc, OSError) and url is not None:
        return f"cannot reach the database at {where} ({source}): {exc.strerror or exc}"
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return f"database error at {where}: {exc}"
    return None


def broker_failure(reason: object, display: str) -> str:
    where = (
        "MQTT_URL" if os.environ.get("MQTT_URL") else "the embedded broker; is iotcloud up running?"
    )
    return f"cannot reach the MQTT broker at {display} ({where}): {reason}"


def unexpected(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (
        f"unexpected {type(exc).__name__}: {text[0] if text else 'no message'} "
        "(IOTCLOUD_DEBUG=1 shows the traceback)"
    )
