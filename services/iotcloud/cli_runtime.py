"""``iotcloud down`` and ``iotcloud status``: what ``iotcloud up`` started, and where.

``up`` writes its process id to ``.iotcloud/up.pid``; its children (broker, services,
simulator) die with it. The embedded PostgreSQL is a daemon of its own (every command of the
checkout shares it), so ``down`` stops it separately.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from shared.settings import project_home


def pid_file() -> Path:
    return project_home() / "up.pid"


def logs_dir() -> Path:
    return project_home() / "logs"


def write_pid() -> None:
    path = pid_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")


def clear_pid() -> None:
    with contextlib.suppress(OSError, ValueError):
        if int(pid_file().read_text().strip()) == os.getpid():
            pid_file().unlink()


def running_up() -> int | None:
    """The process id of this checkout's ``iotcloud up``, if it runs."""
    try:
        pid = int(pid_file().read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    with contextlib.suppress(OSError):
        # A pid the system reused for something else is not ours.
        if b"iotcloud" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
    return pid


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
        return True
    return False


def _address(url: str, default_port: int) -> str:
    """host:port of a URL, without credentials."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or default_port}"
    except ValueError:
        return "?"


def _reachable(url: str, default_port: int) -> bool:
    host, _, port = _address(url, default_port).rpartition(":")
    return port.isdigit() and listening(int(port), host)


def cmd_down(args: argparse.Namespace) -> None:
    from iotcloud import cli

    stopped: list[str] = []
    pid = running_up()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while running_up() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if running_up() is not None:
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            pid_file().unlink()
        stopped.append(f"iotcloud up (pid {pid}) with its broker and services")
    # With DATABASE_URL set, up used that database and started no embedded one.
    if not args.keep_database and not os.environ.get("DATABASE_URL"):
        server = cli.embedded_postgres()
        if server.running():
            server.stop()
            stopped.append(f"the embedded PostgreSQL ({server.data})")
    print("stopped " + " and ".join(stopped) if stopped else "nothing was running")


def status() -> dict[str, Any]:
    from iotcloud import cli
    from shared.settings import env_port

    up_pid = running_up()
    ui_port, ingest_port = env_port("UI_PORT", 8000), env_port("INGEST_PORT", 8001)
    report: dict[str, Any] = {"up": {"running": up_pid is not None, "pid": up_pid}}
    if os.environ.get("DATABASE_URL"):
        report["database"] = {
            "source": "DATABASE_URL",
            "embedded": False,
            "address": _address(os.environ["DATABASE_URL"], 5432),
            "reachable": _reachable(os.environ["DATABASE_URL"], 5432),
        }
    else:
        server = cli.embedded_postgres()
        running = server.running()
        report["database"] = {
            "source": "embedded",
            "embedded": True,
            "running": running,
            "url": server.url if running else None,
            "data": str(server.data),
        }
    if os.environ.get("MQTT_URL"):
        report["broker"] = {
            "source": "MQTT_URL",
            "address": cli.mqtt_display(),
            "listening": _reachable(os.environ["MQTT_URL"], 1883),
        }
    else:
        broker = cli.embedded_broker()
        report["broker"] = {
            "source": "embedded",
            "address": f"127.0.0.1:{broker.port}",
            "listening": listening(broker.port),
        }
    report["ui_iot"] = {
        "url": f"http://127.0.0.1:{ui_port}/",
        "listening": listening(ui_port),
    }
    report["ingest_iot"] = {
        "url": f"http://127.0.0.1:{ingest_port}/device/v1",
        "listening": listening(ingest_port),
    }
    report["logs"] = str(logs_dir())
    return report


def _yes(flag: bool) -> str:
    return "running" if flag else "stopped"


def cmd_status(args: argparse.Namespace) -> None:
    report = status()
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
        return
    up = report["up"]
    print(f"iotcloud up      {_yes(up['running'])}" + (f" (pid {up['pid']})" if up["pid"] else ""))
    database = report["database"]
    if database["embedded"]:
        where = database["url"] or database["data"]
        print(f"PostgreSQL       {_yes(database['running'])}, embedded: {where}")
    else:
        state = "reachable" if database["reachable"] else "not reachable"
        print(f"PostgreSQL       {state}, DATABASE_URL: {database['address']}")
    broker = report["broker"]
    if broker["source"] == "embedded":
        print(f"MQTT broker      {_yes(broker['listening'])}, embedded: {broker['address']}")
    else:
        state = "reachable" if broker["listening"] else "not reachable"
        print(f"MQTT broker      {state}, MQTT_URL: {broker['address']}")
    for name in ("ui_iot", "ingest_iot"):
        part = report[name]
        print(f"{name:<17}{_yes(part['listening'])}: {part['url']}")
    print(f"logs             {report['logs']}")
