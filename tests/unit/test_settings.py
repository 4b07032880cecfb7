"""Settings: every variable read once, a bad value stops start-up naming the variable."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from shared.settings import Settings, SettingsError

BASE = {
    "DATABASE_URL": "postgresql://iot@127.0.0.1:5432/iotcloud",
    "MQTT_URL": "mqtt://svc:pw@127.0.0.1:1884",
    "IOTCLOUD_JWT_SECRET": "s" * 40,
}


def test_defaults_and_values() -> None:
    settings = Settings.from_env(application="ui_iot", environ=BASE)
    assert (settings.ui_port, settings.ingest_port, settings.pool_max_size) == (8000, 8001, 10)
    assert settings.stale_after == timedelta(hours=1)
    assert (settings.limits.max_state_bytes, settings.limits.max_depth) == (65536, 16)
    tuned = Settings.from_env(
        application="ui_iot",
        environ={**BASE, "IOTCLOUD_STALE_AFTER_S": "60", "IOTCLOUD_MAX_DEPTH": " 8 "},
    )
    assert tuned.stale_after == timedelta(seconds=60) and tuned.limits.max_depth == 8


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("IOTCLOUD_MAX_STATE_BYTES", "-1", "at least 1"),
        ("IOTCLOUD_MAX_DEPTH", "0", "at least 1"),
        ("IOTCLOUD_STALE_AFTER_S", "an hour", "must be an integer"),
        ("IOTCLOUD_POOL_MAX", "1.5", "must be an integer"),
        ("UI_PORT", "70000", "at most 65535"),
        ("INGEST_PORT", "\u0661", "must be an integer"),
        ("IOTCLOUD_INGEST_BATCH", "0", "at least 1"),
        ("IOTCLOUD_HISTORY_RETENTION_DAYS", "-3", "at least 1"),
        ("MQTT_URL", "amqp://x@127.0.0.1", "scheme 'amqp'"),
        ("MQTT_URL", "mqtt://x@127.0.0.1:port", "not a URL"),
        ("DATABASE_URL", "mysql://x@127.0.0.1/db", "scheme 'mysql'"),
        ("IOTCLOUD_TLS_CERT", "/nonexistent/cert.pem", "cannot be read"),
        ("IOTCLOUD_JWT_SECRET", "short", "at least 32"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(application="ingest_iot", environ={**BASE, name: value})
    message = str(refused.value)
    assert message.startswith(f"ingest_iot: {name}"), message
    assert words in message, message
    assert "\n" not in message


def test_tls_files_are_checked_and_go_together(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("cert")
    key.write_text("key")
    settings = Settings.from_env(
        application="ui_iot",
        environ={**BASE, "IOTCLOUD_TLS_CERT": str(cert), "IOTCLOUD_TLS_KEY": str(key)},
    )
    assert (settings.tls_cert, settings.tls_key) == (cert, key)
    with pytest.raises(SettingsError, match="must be set together"):
        Settings.from_env(application="ui_iot", environ={**BASE, "IOTCLOUD_TLS_CERT": str(cert)})
