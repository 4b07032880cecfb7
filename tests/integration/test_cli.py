"""The `iotcloud` command line as a script would use it: the happy path and every refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jwt

from tests.support import ROOT, Broker


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotcloud.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_flow_and_refusals(database_url: str, broker: Broker) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MQTT_URL": broker.url,
        "IOTCLOUD_JWT_SECRET": "cli-test-secret-" + "q" * 32,
    }
    assert run(env, "migrate").returncode == 0
    created = run(env, "tenant", "create", "acme", "--name", "Acme")
    assert (created.returncode, created.stdout.strip()) == (0, "acme")

    refusals = [
        (("tenant", "create", "acme"), "already exists"),
        (("tenant", "create", "Bad_Id"), "is not a tenant id"),
        (("tenant", "create", "x\n"), "is not a tenant id"),
        (("tenant", "create", "x\u00e9"), "is not a tenant id"),
        (("device", "create", "--tenant", "acme", "--id", "d-1\n"), "is not a device id"),
        (
            ("user", "create", "--tenant", "nope", "--email", "a@b.c", "--password", "long-enough"),
            "no tenant",
        ),
        (
            ("user", "create", "--tenant", "acme", "--email", "a@b.c", "--password", "short"),
            "at least 8",
        ),
        (
            (
                "user",
                "create",
                "--tenant",
                "acme",
                "--email",
                "not-an-email",
                "--password",
                "long-enough",
            ),
            "e-mail",
        ),
        (("token", "--email", "ghost@acme.test"), "no user"),
        (("device", "create", "--tenant", "nope"), "no tenant"),
        (("device", "create", "--tenant", "acme", "--id", "bad/id"), "is not a device id"),
    ]
    for args, message in refusals:
        result = run(env, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr

    # A bad setting stops the command with one line naming it.
    refused = run(
        {**env, "IOTCLOUD_MAX_DEPTH": "-1"},
        "fleet",
        "set-desired",
        "--tenant",
        "acme",
        "--desired",
        "{}",
    )
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "iotcloud: IOTCLOUD_MAX_DEPTH must be at least 1, got -1"
    ]

    user = run(
        env,
        "user",
        "create",
        "--tenant",
        "acme",
        "--email",
        "ops@acme.test",
        "--password",
        "a-long-password",
        "--role",
        "operator",
    )
    assert json.loads(user.stdout)["role"] == "operator"
    assert (
        "already exists"
        in run(
            env,
            "user",
            "create",
            "--tenant",
            "acme",
            "--email",
            "OPS@acme.test",
            "--password",
            "a-long-password",
        ).stderr
    )
    token = run(env, "token", "--email", "ops@acme.test", "--ttl", "60").stdout.strip()
    claims = jwt.decode(token, env["IOTCLOUD_JWT_SECRET"], algorithms=["HS256"])
    assert (claims["tenant"], claims["role"], claims["exp"] - claims["iat"]) == (
        "acme",
        "operator",
        60,
    )

    device = json.loads(run(env, "device", "create", "--tenant", "acme", "--id", "boiler-1").stdout)
    assert device["device_id"] == "boiler-1" and device["provision_token"].startswith("tok-")
    assert (
        "already in use"
        in run(env, "device", "create", "--tenant", "acme", "--id", "boiler-1").stderr
    )

    # The device's broker account exists: it logs in with its own token, and not without.
    assert _broker_login(broker.port, "boiler-1", device["provision_token"]) == 0
    assert _broker_login(broker.port, "boiler-1", "tok-wrong") != 0


def _broker_login(port: int, username: str, password: str) -> int:
    """The CONNACK reason code mosquitto_sub gets (0 = accepted)."""
    result = subprocess.run(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-u",
            username,
            "-P",
            password,
            "-i",
            username,
            "-t",
            f"tenant/acme/device/{username}/shadow/desired",
            "-C",
            "1",
            "-W",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    # -W 2 times out (exit 27) on an accepted login with no message; a refusal exits 5.
    return 0 if result.returncode == 27 else result.returncode
