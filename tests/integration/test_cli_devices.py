"""``iotcloud device list|show|delete|rotate-token``, ``--json``, ``--password-stdin`` and
the completion script, as a script would use them (subprocesses, a real database and broker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.integration.test_cli import _broker_login
from tests.support import ROOT, Broker


def run(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "iotcloud.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_device_commands(database_url: str, broker: Broker) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "MQTT_URL": broker.url}
    assert run(env, "tenant", "create", "acme").returncode == 0
    tokens = {}
    for device_id in ("boiler-1", "boiler-2", "fan-1"):
        created = run(env, "device", "create", "--tenant", "acme", "--id", device_id)
        tokens[device_id] = json.loads(created.stdout)["provision_token"]

    listed = json.loads(run(env, "device", "list", "--tenant", "acme", "--json").stdout)
    assert [item["device_id"] for item in listed["items"]] == ["boiler-1", "boiler-2", "fan-1"]
    assert {item["sync_status"] for item in listed["items"]} == {"stale"}
    limited = json.loads(
        run(env, "device", "list", "--tenant", "acme", "--limit", "2", "--json").stdout
    )
    assert len(limited["items"]) == 2
    table = run(env, "device", "list", "--tenant", "acme", "--q", "boiler").stdout.splitlines()
    assert table[0].split()[:3] == ["DEVICE", "NAME", "STATUS"]
    assert [line.split()[0] for line in table[1:]] == ["boiler-1", "boiler-2"]

    shown = json.loads(run(env, "device", "show", "--tenant", "acme", "boiler-1", "--json").stdout)
    assert shown["device_id"] == "boiler-1" and shown["desired_version"] == 0
    assert set(shown) >= {"desired", "reported", "delta", "sync_status", "last_seen"}
    text = run(env, "device", "show", "--tenant", "acme", "boiler-1").stdout
    assert "sync_status:" in text and "desired:" in text

    rotated = json.loads(run(env, "device", "rotate-token", "--tenant", "acme", "boiler-1").stdout)
    new_token = rotated["provision_token"]
    assert new_token.startswith("tok-") and new_token != tokens["boiler-1"]
    assert _broker_login(broker.port, "boiler-1", tokens["boiler-1"]) != 0
    assert _broker_login(broker.port, "boiler-1", new_token) == 0

    deleted = run(env, "device", "delete", "--tenant", "acme", "boiler-2", "--json")
    assert json.loads(deleted.stdout) == {
        "device_id": "boiler-2",
        "tenant_id": "acme",
        "deleted": True,
    }
    assert _broker_login(broker.port, "boiler-2", tokens["boiler-2"]) != 0
    again = run(env, "device", "delete", "--tenant", "acme", "boiler-2")
    assert again.returncode == 2 and "no device 'boiler-2'" in again.stderr
    after = json.loads(run(env, "device", "list", "--tenant", "acme", "--json").stdout)
    assert [item["device_id"] for item in after["items"]] == ["boiler-1", "fan-1"]


def test_password_from_stdin_and_completion(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "IOTCLOUD_JWT_SECRET": "s" * 48}
    assert run(env, "tenant", "create", "acme").returncode == 0
    created = run(
        env,
        "user",
        "create",
        "--tenant",
        "acme",
        "--email",
        "ci@acme.test",
        "--password-stdin",
        "--role",
        "viewer",
        stdin="a-long-password\n",
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["role"] == "viewer"
    short = run(
        env,
        "user",
        "create",
        "--tenant",
        "acme",
        "--email",
        "x@acme.test",
        "--password-stdin",
        stdin="short\n",
    )
    assert short.returncode == 2 and "at least 8" in short.stderr

    script = run(env, "completion", "bash").stdout
    assert "complete -F _iotcloud iotcloud" in script
    assert "rotate-token" in script and "--password-stdin" in script
    completed = subprocess.run(
        [
            "bash",
            "-c",
            script
            + '\nCOMP_WORDS=(iotcloud device ro); COMP_CWORD=2; _iotcloud; echo "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert completed.stdout.split() == ["rotate-token"], completed.stderr


def test_every_help_has_a_description_examples_and_the_environment() -> None:
    from iotcloud.cli import build_parser

    parser = build_parser()
    paths: list[list[str]] = []

    def walk(prefix: list[str], current) -> None:  # type: ignore[no-untyped-def]
        for action in current._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, child in action.choices.items():
                    paths.append([*prefix, name])
                    walk([*prefix, name], child)

    walk([], parser)
    assert ["device", "rotate-token"] in paths and ["status"] in paths and ["down"] in paths
    for path in paths:
        result = run(dict(os.environ), *path, "--help")
        assert result.returncode == 0, path
        assert "SPEC" not in result.stdout, path
        assert "environment:" in result.stdout and "DATABASE_URL" in result.stdout, path
        leaf = not any(other[: len(path)] == path and len(other) > len(path) for other in paths)
        if leaf:
            assert "examples:" in result.stdout, path
            # Every option says what it does.
            for action in _parser_at(parser, path)._actions:
                assert action.help, (path, action.dest)


def _parser_at(parser, path):  # type: ignore[no-untyped-def]
    for name in path:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return parser


def test_password_prompt_on_a_terminal(database_url: str) -> None:
    """No --password and stdin a terminal: asked twice, never echoed."""
    import pty
    import select
    import time

    env = {**os.environ, "DATABASE_URL": database_url}
    assert run(env, "tenant", "create", "acme").returncode == 0
    argv = [sys.executable, "-m", "iotcloud.cli", "user", "create", "--tenant", "acme"]
    argv += ["--email", "tty@acme.test", "--role", "operator"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on the terminal
        os.chdir(ROOT)
        os.execve(sys.executable, argv, env)  # noqa: S606 - our own CLI, argv fixed
    seen = b""
    deadline = time.monotonic() + 60
    answered = 0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        prompts = seen.count(b"password: ") + seen.count(b"again: ")
        while answered < min(prompts, 2):
            os.write(fd, b"a-long-password\n")
            answered += 1
    _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert answered == 2 and '"role":"operator"' in text.replace(" ", "")
    assert "a-long-password" not in text  # not echoed
