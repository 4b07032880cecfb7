"""Every CLI failure is one line on standard error and exit status 2, never a traceback
(unless IOTCLOUD_DEBUG=1): the database down or missing, the broker unreachable, a bad id,
an id that exists (whoever holds it)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT, Broker, free_port


def run(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotcloud.cli", *args],
        env={key: value for key, value in env.items() if key != "IOTCLOUD_DEBUG"} | {},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("iotcloud: ")
    return lines[0]


def base_env(database_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "IOTCLOUD_HOME": "/nonexistent-home"}


def test_database_down_or_missing_is_one_line(database_url: str) -> None:
    port = free_port()
    down = one_line(
        run(base_env(f"postgresql://iot@127.0.0.1:{port}/iotcloud"), "tenant", "create", "acme")
    )
    assert f"127.0.0.1:{port}" in down and "DATABASE_URL" in down and "refused" in down

    missing_url = database_url.rsplit("/", 1)[0] + "/no_such_database_here"
    missing = one_line(run(base_env(missing_url), "device", "list", "--tenant", "acme"))
    assert "no_such_database_here does not exist" in missing and "DATABASE_URL" in missing

    # IOTCLOUD_DEBUG=1 is the one way to see the traceback.
    debug = subprocess.run(
        [sys.executable, "-m", "iotcloud.cli", "migrate"],
        env={**base_env(missing_url), "IOTCLOUD_DEBUG": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert "InvalidCatalogNameError" in debug.stderr


def test_broker_unreachable_is_one_line(database_url: str) -> None:
    env = base_env(database_url)
    assert run(env, "tenant", "create", "acme").returncode == 0
    port = free_port()
    line = one_line(
        run(
            {**env, "MQTT_URL": f"mqtt://svc:secret@127.0.0.1:{port}"},
            "simulate",
            "--tenant",
            "acme",
            "--devices",
            "1",
            "--duration",
            "2",
        )
    )
    assert f"127.0.0.1:{port}" in line and "MQTT_URL" in line and "secret" not in line


def test_ids_are_explained_in_words_and_a_taken_id_reveals_no_owner(
    database_url: str, broker: Broker
) -> None:
    env = {**base_env(database_url), "MQTT_URL": broker.url}
    for tenant in ("acme", "rival"):
        assert run(env, "tenant", "create", tenant).returncode == 0

    bad_tenant = one_line(run(env, "device", "list", "--tenant", "Acme Corp"))
    assert "'Acme Corp' is not a tenant id" in bad_tenant and "lower-case letters" in bad_tenant
    bad_device = one_line(run(env, "device", "create", "--tenant", "acme", "--id", "a/b"))
    assert "'a/b' is not a device id" in bad_device and "MQTT" in bad_device
    assert "[A-Za-z0-9]" not in bad_device  # words, not a regular expression

    assert run(env, "device", "create", "--tenant", "rival", "--id", "pump-7").returncode == 0
    assert run(env, "device", "create", "--tenant", "acme", "--id", "pump-8").returncode == 0
    elsewhere = one_line(run(env, "device", "create", "--tenant", "acme", "--id", "pump-7"))
    mine = one_line(run(env, "device", "create", "--tenant", "acme", "--id", "pump-8"))
    # The same refusal whether the id is ours or another tenant's: nothing about the owner.
    assert elsewhere.replace("pump-7", "X") == mine.replace("pump-8", "X")
    assert "rival" not in elsewhere

    # Another tenant's device is "not found", exactly like one that does not exist.
    hidden = one_line(run(env, "device", "show", "--tenant", "acme", "pump-7"))
    absent = one_line(run(env, "device", "show", "--tenant", "acme", "pump-9"))
    assert hidden.replace("pump-7", "X") == absent.replace("pump-9", "X")
    for action in ("delete", "rotate-token"):
        refused = one_line(run(env, "device", action, "--tenant", "acme", "pump-7"))
        assert "no device 'pump-7' in tenant 'acme'" in refused
    assert run(env, "device", "show", "--tenant", "rival", "pump-7").returncode == 0


def test_user_create_without_a_password_source_is_refused(database_url: str) -> None:
    env = base_env(database_url)
    assert run(env, "tenant", "create", "acme").returncode == 0
    line = one_line(
        run(env, "user", "create", "--tenant", "acme", "--email", "a@acme.test", stdin="")
    )
    assert "--password-stdin" in line


def test_usage_errors_are_one_line_naming_the_help() -> None:
    for args, expected in (
        (("device", "list"), "the following arguments are required: --tenant"),
        (("device", "lst"), "invalid choice: 'lst'"),
        (("status", "--bogus"), "unrecognized arguments: --bogus"),
    ):
        line = one_line(run(dict(os.environ), *args))
        assert expected in line and "--help)" in line, line
