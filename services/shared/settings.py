"""One typed settings object per process, read from the environment once at start-up.

Every variable the services read is read and checked here: a value that is set but not
usable (not a number, out of range, an unknown URL scheme, a file that cannot be read)
stops start-up with one line naming the variable, instead of being ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from shared.twin import DEFAULT_MAX_DEPTH, DEFAULT_MAX_STATE_BYTES, Limits

DEFAULT_JWT_SECRET = "dev-insecure-secret-change-me"  # noqa: S105 - the value we refuse outside dev

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})
_DATABASE_SCHEMES = frozenset({"postgres", "postgresql"})
_MQTT_SCHEMES = frozenset({"mqtt", "tcp"})
_INTEGER = re.compile(r"-?[0-9]+")


class SettingsError(RuntimeError):
    """The environment does not describe a runnable service."""


def project_home() -> Path:
    """Where embedded parts keep their files: ``$IOTCLOUD_HOME`` or ``.iotcloud/`` here."""
    return Path(os.environ.get("IOTCLOUD_HOME", ".iotcloud")).resolve()


def env_int(
    name: str,
    default: int,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """An integer variable (unset or empty: ``default``); anything else is a SettingsError."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if raw == "":
        return default
    if _INTEGER.fullmatch(raw) is None:  # int() would also take "1_000" and other scripts' digits
        raise SettingsError(f"{name} must be an integer, got {raw!r}")
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise SettingsError(f"{name} must be at least {minimum}{upper}, got {value}")
    return value


def env_port(name: str, default: int, *, environ: Mapping[str, str] | None = None) -> int:
    return env_int(name, default, minimum=0, maximum=65535, environ=environ)


def env_flag(name: str, *, environ: Mapping[str, str] | None = None) -> bool:
    return (os.environ if environ is None else environ).get(name, "").strip().lower() in _TRUE


def _url(name: str, raw: str, schemes: frozenset[str], example: str) -> str:
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise SettingsError(f"{name} is not a URL like {example}: {exc}") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise SettingsError(
            f"{name} must be a {'/'.join(sorted(schemes))} URL like {example}, "
            f"got scheme {parts.scheme or '(none)'!r}"
        )
    return raw


def _readable_file(name: str, environ: Mapping[str, str]) -> Path | None:
    raw = environ.get(name, "")
    if not raw:
        return None
    path = Path(raw)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise SettingsError(f"{name} names a file that cannot be read: {exc}") from None
    return path


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    mqtt_url: str
    jwt_secret: str
    jwt_ttl_s: int
    dev_mode: bool
    ui_port: int
    ingest_port: int
    stale_after: timedelta
    limits: Limits
    pool_max_size: int
    history_retention_days: int
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ingest_batch: int = 500
    max_shadows: int = 10  # named shadows per device (SPEC §9)
    shadow_rps: int = 20  # AWS shadow requests per second per thing
    # The AWS topic tree ($aws/...); off only for the in-process fallback broker, which
    # refuses every topic that starts with "$" (MQTT-4.7.2-1).
    aws_topics: bool = True

    @classmethod
    def from_env(cls, *, application: str, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        try:
            return cls._read(env)
        except SettingsError as exc:
            raise SettingsError(f"{application}: {exc}") from None

    @classmethod
    def _read(cls, env: Mapping[str, str]) -> Settings:
        dev_mode = env_flag("IOTCLOUD_DEV", environ=env)
        secret = env.get("IOTCLOUD_JWT_SECRET", "")
        if not dev_mode and (not secret or secret == DEFAULT_JWT_SECRET):
            raise SettingsError(
                "IOTCLOUD_JWT_SECRET is missing or the default; set a long random secret "
                "(or IOTCLOUD_DEV=1 for local development only)"
            )
        if not dev_mode and len(secret) < 32:
            raise SettingsError("IOTCLOUD_JWT_SECRET must be at least 32 characters")
        database_url = env.get("DATABASE_URL", "")
        if not database_url:
            raise SettingsError("DATABASE_URL is not set")
        mqtt_url = env.get("MQTT_URL", "")
        if not mqtt_url:
            raise SettingsError("MQTT_URL is not set")
        tls_cert = _readable_file("IOTCLOUD_TLS_CERT", env)
        tls_key = _readable_file("IOTCLOUD_TLS_KEY", env)
        if (tls_cert is None) != (tls_key is None):
            raise SettingsError("IOTCLOUD_TLS_CERT and IOTCLOUD_TLS_KEY must be set together")
        return cls(
            database_url=_url(
                "DATABASE_URL",
                database_url,
                _DATABASE_SCHEMES,
                "postgresql://user@host:5432/db",
            ),
            mqtt_url=_url("MQTT_URL", mqtt_url, _MQTT_SCHEMES, "mqtt://user:password@host:1883"),
            jwt_secret=secret or DEFAULT_JWT_SECRET,
            jwt_ttl_s=env_int("IOTCLOUD_JWT_TTL_S", 3600, environ=env),
            dev_mode=dev_mode,
            ui_port=env_port("UI_PORT", 8000, environ=env),
            ingest_port=env_port("INGEST_PORT", 8001, environ=env),
            stale_after=stale_after(env),
            limits=limits(env),
            pool_max_size=env_int("IOTCLOUD_POOL_MAX", 10, environ=env),
            history_retention_days=env_int("IOTCLOUD_HISTORY_RETENTION_DAYS", 30, environ=env),
            tls_cert=tls_cert,
            tls_key=tls_key,
            ingest_batch=env_int("IOTCLOUD_INGEST_BATCH", 500, environ=env),
            max_shadows=env_int("IOTCLOUD_MAX_SHADOWS", 10, minimum=0, environ=env),
            shadow_rps=env_int("IOTCLOUD_SHADOW_RPS", 20, environ=env),
            aws_topics=env.get("IOTCLOUD_AWS_TOPICS", "1").strip().lower()
            not in {"0", "false", "no"},
        )


def limits(environ: Mapping[str, str] | None = None) -> Limits:
    """The twin limits (also what the CLI checks a bulk patch against before queueing it)."""
    return Limits(
        max_state_bytes=env_int(
            "IOTCLOUD_MAX_STATE_BYTES", DEFAULT_MAX_STATE_BYTES, environ=environ
        ),
        max_depth=env_int("IOTCLOUD_MAX_DEPTH", DEFAULT_MAX_DEPTH, environ=environ),
    )


def stale_after(environ: Mapping[str, str] | None = None) -> timedelta:
    return timedelta(seconds=env_int("IOTCLOUD_STALE_AFTER_S", 3600, environ=environ))
