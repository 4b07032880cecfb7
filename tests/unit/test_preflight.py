"""iotcloud-start (the containers' entry point): a start that cannot go on is one line naming
the setting and a non-zero exit, before anything listens or migrates."""

from __future__ import annotations

import socket
from urllib.parse import unquote, urlsplit

import pytest

from iotcloud import preflight
from iotcloud.preflight import PreflightError, check_port, complete_env, main

PARTS = {
    "POSTGRES_PASSWORD": "p@ss:w/rd%",
    "IOTCLOUD_BROKER_SERVICE_PASSWORD": "b r@ker",
    "IOTCLOUD_JWT_SECRET": "j" * 40,
}


def test_urls_from_parts_quote_every_character() -> None:
    env = dict(PARTS)
    complete_env(env)
    database = urlsplit(env["DATABASE_URL"])
    assert (database.hostname, database.port, database.path) == ("iot-postgres", 5432, "/iotcloud")
    assert unquote(database.password or "") == "p@ss:w/rd%"
    mqtt = urlsplit(env["MQTT_URL"])
    assert unquote(mqtt.username or "") == "$iotcloud-service"
    assert unquote(mqtt.password or "") == "b r@ker"
    assert (mqtt.hostname, mqtt.port) == ("iot-mosquitto", 1883)


def test_given_urls_win() -> None:
    env = {"DATABASE_URL": "postgresql://a@b/c", "MQTT_URL": "mqtt://x:y@z:1"}
    complete_env(env)  # no POSTGRES_PASSWORD needed
    assert env == {"DATABASE_URL": "postgresql://a@b/c", "MQTT_URL": "mqtt://x:y@z:1"}


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "POSTGRES_PASSWORD is not set"), ("change-me-postgres", "example value")],
)
def test_missing_or_example_secret_is_refused(value: str, message: str) -> None:
    with pytest.raises(PreflightError, match=message) as caught:
        complete_env({**PARTS, "POSTGRES_PASSWORD": value})
    assert caught.value.code == 2


def test_port_in_use_is_named() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PreflightError, match=f"port {port} \\(UI_PORT\\).*already in use"):
            check_port("127.0.0.1", port, "UI_PORT")
    check_port("127.0.0.1", port, "UI_PORT")  # free again


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_main_missing_jwt_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(preflight.os, "environ", {k: v for k, v in PARTS.items() if "JWT" not in k})
    assert main(["ui"]) == 2
    assert _one_line(capsys) == "ui_iot: IOTCLOUD_JWT_SECRET is not set (see deploy/.env.example)"


def test_main_unreadable_tls_file_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**PARTS, "IOTCLOUD_TLS_CERT": "/nonexistent/cert.pem", "IOTCLOUD_TLS_KEY": "/etc/hosts"}
    monkeypatch.setattr(preflight.os, "environ", env)
    assert main(["ingest"]) == 2
    line = _one_line(capsys)
    assert line.startswith("ingest_iot: IOTCLOUD_TLS_CERT names a file that cannot be read")


def test_main_database_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        env = {
            **PARTS,
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(port),
            "IOTCLOUD_DB_WAIT_S": "1",
            "UI_PORT": "0",
        }
        monkeypatch.setattr(preflight.os, "environ", env)
        assert main(["ui"]) == 1
    line = _one_line(capsys)
    assert line.startswith(f"ui_iot: the database at 127.0.0.1:{port} did not answer within 1 s")


def test_main_bootstrap_refuses_a_short_admin_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        **PARTS,
        "IOTCLOUD_BOOTSTRAP_TENANT": "acme",
        "IOTCLOUD_BOOTSTRAP_ADMIN_EMAIL": "a@acme.example",
        "IOTCLOUD_BOOTSTRAP_ADMIN_PASSWORD": "short",
    }
    monkeypatch.setattr(preflight.os, "environ", env)
    assert main(["bootstrap"]) == 2
    assert "at least 12 characters" in _one_line(capsys)


def test_main_unknown_role(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["web"]) == 2
    assert _one_line(capsys).startswith("usage: iotcloud-start")
