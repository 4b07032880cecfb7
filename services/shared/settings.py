"""One typed settings object per process, read from the environment once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from shared.twin import Limits

DEFAULT_JWT_SECRET = "dev-insecure-secret-change-me"  # noqa: S105 - the value we refuse outside dev


class SettingsError(RuntimeError):
    """The environment does not describe a runnable service."""


def project_home() -> Path:
    """Where embedded parts keep their files: ``$IOTCLOUD_HOME`` or ``.iotcloud/`` here."""
    return Path(os.environ.get("IOTCLOUD_HOME", ".iotcloud")).resolve()


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc


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

    @classmethod
    def from_env(cls, *, application: str) -> Settings:
        dev_mode = os.environ.get("IOTCLOUD_DEV", "") in {"1", "true", "yes"}
        secret = os.environ.get("IOTCLOUD_JWT_SECRET", "")
        if not dev_mode and (not secret or secret == DEFAULT_JWT_SECRET):
            raise SettingsError(
                f"{application}: IOTCLOUD_JWT_SECRET is missing or the default; set a long random "
                "secret (or IOTCLOUD_DEV=1 for local development only)"
            )
        if not dev_mode and len(secret) < 32:
            raise SettingsError(
                f"{application}: IOTCLOUD_JWT_SECRET must be at least 32 characters"
            )
        database_url = os.environ.get("DATABASE_URL", "")
        if not database_url:
            raise SettingsError(f"{application}: DATABASE_URL is not set")
        mqtt_url = os.environ.get("MQTT_URL", "")
        if not mqtt_url:
            raise SettingsError(f"{application}: MQTT_URL is not set")
        return cls(
            database_url=database_url,
            mqtt_url=mqtt_url,
            jwt_secret=secret or DEFAULT_JWT_SECRET,
            jwt_ttl_s=_int("IOTCLOUD_JWT_TTL_S", 3600),
            dev_mode=dev_mode,
            ui_port=_int("UI_PORT", 8000),
            ingest_port=_int("INGEST_PORT", 8001),
            stale_after=timedelta(seconds=_int("IOTCLOUD_STALE_AFTER_S", 3600)),
            limits=Limits(
                max_state_bytes=_int("IOTCLOUD_MAX_STATE_BYTES", 64 * 1024),
                max_depth=_int("IOTCLOUD_MAX_DEPTH", 16),
            ),
            pool_max_size=_int("IOTCLOUD_POOL_MAX", 10),
            history_retention_days=_int("IOTCLOUD_HISTORY_RETENTION_DAYS", 30),
        )
