"""``iotcloud``: run, inspect and administer the platform from the command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import orjson
import uvloop

from iotcloud import embedded
from iotcloud.provisioning import ProvisioningError
from shared import db
from shared import settings as env_settings
from shared.errors import DomainError
from shared.settings import SettingsError, env_port, project_home

DEFAULT_PG_PORT = 5544
CLI_ACTOR = "iotcloud-cli"
_JOB_COUNTS = ("job_id", "status", "matched", "written", "synced", "skipped", "failed", "error")
DEFAULT_BROKER_PORT = 1884
DEFAULT_BROKER_TLS_PORT = 8883


class CliError(Exception):
    pass


def _one_line_errors() -> tuple[type[Exception], ...]:
    from iotcloud.cli_devices import DeviceCommandError

    return (
        CliError,
        DeviceCommandError,
        embedded.EmbeddedError,
        ValueError,
        ProvisioningError,
        SettingsError,
    )


def embedded_postgres() -> embedded.EmbeddedPostgres:
    """``IOTCLOUD_PG_PORT`` when set (a taken port is then an error); else the port picked
    and remembered under ``.iotcloud/pg`` earlier, else 5544 (another if that is taken)."""
    home = project_home()
    if (os.environ.get("IOTCLOUD_PG_PORT") or "").strip():
        return embedded.EmbeddedPostgres(home, env_port("IOTCLOUD_PG_PORT", DEFAULT_PG_PORT))
    unpinned = embedded.EmbeddedPostgres(home, DEFAULT_PG_PORT, fixed_port=False)
    remembered = unpinned.remembered_port()
    if remembered is None:
        return unpinned
    return embedded.EmbeddedPostgres(home, remembered, fixed_port=False)


def embedded_broker() -> embedded.EmbeddedBroker:
    return embedded.EmbeddedBroker(
        project_home(),
        env_port("IOTCLOUD_BROKER_PORT", DEFAULT_BROKER_PORT),
        tls_port=env_port("IOTCLOUD_BROKER_TLS_PORT", DEFAULT_BROKER_TLS_PORT),
        bind=os.environ.get("IOTCLOUD_BROKER_BIND") or "127.0.0.1",
        durability=broker_durability(),
    )


def broker_durability() -> str:
    """``IOTCLOUD_BROKER_DURABILITY``: ``fast`` (the default) or ``safe``."""
    value = os.environ.get("IOTCLOUD_BROKER_DURABILITY") or "fast"
    if value not in embedded.PERSISTENCE:
        raise SettingsError(
            f"IOTCLOUD_BROKER_DURABILITY must be one of {', '.join(embedded.PERSISTENCE)}, "
            f"got {value!r}"
        )
    return value


_LAST_DATABASE_URL: str | None = None


def database_url() -> str:
    """``DATABASE_URL``, or this checkout's embedded PostgreSQL (started if needed)."""
    global _LAST_DATABASE_URL
    configured = os.environ.get("DATABASE_URL")
    _LAST_DATABASE_URL = configured or embedded_postgres().ensure_running()
    return _LAST_DATABASE_URL


def mqtt_url() -> str:
    return os.environ.get("MQTT_URL") or embedded_broker().url


def mqtt_display() -> str:
    """The broker address without credentials, for people to read."""
    from shared.mqtt import parse_mqtt_url

    return parse_mqtt_url(mqtt_url()).display()


def jwt_secret() -> str:
    """``IOTCLOUD_JWT_SECRET``, or a random secret kept for this checkout under ``.iotcloud``."""
    configured = os.environ.get("IOTCLOUD_JWT_SECRET")
    if configured:
        return configured
    secret_file = project_home() / "jwt.secret"
    if not secret_file.exists():
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.write_text(secrets.token_urlsafe(48))
        secret_file.chmod(0o600)
    return secret_file.read_text().strip()


def service_env() -> dict[str, str]:
    """The environment every child service gets."""
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "MQTT_URL": mqtt_url(),
        "IOTCLOUD_JWT_SECRET": jwt_secret(),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")


async def _with_conn(work: Callable[[Any], Awaitable[Any]]) -> Any:
    conn = await db.connect(database_url(), application_name="iotcloud-cli")
    try:
        return await work(conn)
    finally:
        await conn.close()


# --- commands --------------------------------------------------------------------------------


async def cmd_migrate(_: argparse.Namespace) -> None:
    applied = await _with_conn(db.migrate)
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))


async def cmd_tenant_create(args: argparse.Namespace) -> None:
    from iotcloud.cli_devices import check_tenant_id
    from shared.repositories import tenants

    check_tenant_id(args.id)

    async def work(conn: Any) -> bool:
        await db.migrate(conn)
        return await tenants.insert(conn, args.id, args.name or args.id)

    if not await _with_conn(work):
        raise CliError(f"tenant {args.id!r} already exists")
    print(args.id)


async def cmd_user_create(args: argparse.Namespace) -> None:
    from iotcloud.cli_devices import check_tenant_id
    from shared.repositories import tenants, users
    from shared.security import hash_password

    check_tenant_id(args.tenant)
    args.password = read_password(args)
    if len(args.password) < 8:
        raise CliError("password must be at least 8 characters")
    if "@" not in args.email:
        raise CliError("email must be an e-mail address")

    async def work(conn: Any) -> int | None:
        await db.migrate(conn)
        if not await tenants.exists(conn, args.tenant):
            raise CliError(f"no tenant {args.tenant!r}")
        return await users.insert(
            conn,
            tenant_id=args.tenant,
            email=args.email,
            password_hash=hash_password(args.password),
            role=args.role,
        )

    user_id = await _with_conn(work)
    if user_id is None:
        raise CliError(f"a user with e-mail {args.email!r} already exists")
    _print_json(
        {"user_id": user_id, "tenant_id": args.tenant, "email": args.email, "role": args.role}
    )


def read_password(args: argparse.Namespace) -> str:
    """--password-stdin, else --password, else a prompt (twice) when stdin is a terminal."""
    if args.password_stdin:
        if args.password is not None:
            raise CliError("give --password or --password-stdin, not both")
        return sys.stdin.readline().rstrip("\r\n")
    if args.password is not None:
        return str(args.password)
    if not sys.stdin.isatty():
        raise CliError("no password: pass --password-stdin and write it to standard input")
    import getpass

    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise CliError("the two passwords differ")
    return first


async def cmd_token(args: argparse.Namespace) -> None:
    from shared.repositories import users
    from shared.security import Principal, issue_token

    user = await _with_conn(lambda conn: users.by_email(conn, args.email))
    if user is None:
        raise CliError(f"no user with e-mail {args.email!r}")
    who = Principal(user["user_id"], user["email"], user["tenant_id"], user["role"])
    print(issue_token(who, secret=jwt_secret(), ttl_s=args.ttl))


async def cmd_device_create(args: argparse.Namespace) -> None:
    from iotcloud.cli_devices import check_device_id, check_tenant_id
    from iotcloud.provisioning import create_devices

    check_tenant_id(args.tenant)
    if args.id is not None:
        check_device_id(args.id)
    created = await create_devices(
        database_url(), tenant_id=args.tenant, specs=[(args.id, args.name)]
    )
    _print_json(created[0].as_json())


async def cmd_device_import(args: argparse.Namespace) -> None:
    """Check the whole file, then register it in batches with a progress bar on stderr (the
    style of ``fleet set-desired``); the tokens go to ``--out`` or standard output."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from iotcloud import importing

    out_path = Path(args.out) if args.out else None
    if out_path is not None and out_path.exists() and not args.force:
        raise CliError(f"{out_path} exists; pass --force to overwrite it")
    rows = importing.read_rows(Path(args.file))
    started = time.monotonic()
    with (
        importing.tokens_output(out_path, force=args.force) as out,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as progress,
    ):
        bar = progress.add_task("importing", total=len(rows))
        done = await importing.import_devices(
            database_url(),
            tenant_id=args.tenant,
            rows=rows,
            out=out,
            on_progress=lambda count: progress.advance(bar, count),
        )
    where = f"tokens in {out_path}" if out_path else "tokens on standard output"
    print(
        f"imported {done} devices into tenant {args.tenant} in "
        f"{time.monotonic() - started:.1f} s; {where}",
        file=sys.stderr if out_path is None else sys.stdout,
    )


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from shared.runtime import tune_garbage_collector
    from shared.settings import Settings
    from shared.tls import TlsFiles, ensure_server_certificate

    os.environ.setdefault("DATABASE_URL", database_url())
    os.environ.setdefault("MQTT_URL", mqtt_url())
    tls: TlsFiles | None = None
    if args.service == "ui":
        from ui_iot.app import create_app

        settings = Settings.from_env(application="ui_iot")
        app, port = create_app(settings), args.port or settings.ui_port
    else:
        from ingest_iot.app import create_app as create_ingest

        settings = Settings.from_env(application="ingest_iot")
        app, port = create_ingest(settings), args.port or settings.ingest_port
        if os.environ.get("IOTCLOUD_INGEST_TLS", "") in {"1", "true", "yes"}:
            # The broker's certificate: a device trusts one ca.pem for MQTT and HTTPS.
            tls = ensure_server_certificate(project_home())
    tune_garbage_collector()
    uvicorn.run(
        app,
        host=args.host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level=os.environ.get("IOTCLOUD_LOG_LEVEL", "warning"),
        access_log=False,
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
    )


async def cmd_up(args: argparse.Namespace) -> None:
    from iotcloud.supervisor import up

    await up(demo=args.demo, verbose=args.verbose)


def check_broker_reachable(url: str) -> None:
    """One line naming the broker and MQTT_URL when nothing answers there."""
    import socket

    from iotcloud.cli_failures import broker_failure
    from shared.mqtt import parse_mqtt_url

    target = parse_mqtt_url(url)
    try:
        with socket.create_connection((target.host, target.port), timeout=5):
            return
    except OSError as exc:
        raise CliError(broker_failure(exc.strerror or exc, target.display())) from None


async def cmd_simulate(args: argparse.Namespace) -> None:
    from iotcloud.simulator import simulate

    if not args.http:
        check_broker_reachable(mqtt_url())
    await simulate(
        database_url(),
        mqtt_url(),
        tenant_id=args.tenant,
        count=args.devices,
        rate=args.rate,
        http_url=args.http_url if args.http else None,
        duration=args.duration,
        prefix=args.prefix,
        apply_delay=args.apply_delay,
        progress_every=args.progress_every,
        burst=args.burst,
        resend_after=args.resend_after,
    )


async def cmd_fleet_set_desired(args: argparse.Namespace) -> None:
    """Queue a bulk desired job and run it here, with a progress bar; ends with the counts.

    Exits 1 when some device refused the write (the job is then "failed").
    """

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from shared.repositories import tenants
    from shared.services import fleet

    try:
        desired = orjson.loads(args.desired)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"--desired is not valid JSON: {exc}") from exc
    filter_document: dict[str, Any] = {}
    if args.tag:
        filter_document["tag"] = args.tag
    if args.status:
        filter_document["sync_status"] = args.status
    if args.model:
        filter_document["model_id"] = args.model
    if args.device:
        filter_document["device_ids"] = args.device
    if args.q:
        filter_document["q"] = args.q
    # The same settings, with the same defaults, as the services (shared.settings).
    limits = env_settings.limits()
    stale_after = env_settings.stale_after()
    request = fleet.parse_job_request({"filter": filter_document, "desired": desired}, limits)

    url = database_url()
    pool = await db.create_pool(url, application_name="iotcloud-fleet", max_size=args.workers + 2)
    try:
        async with db.transaction(pool) as conn:
            await db.migrate(conn)
            if not await tenants.exists(conn, args.tenant):
                raise CliError(f"no tenant {args.tenant!r}")
            job_id = await fleet.create_job(
                conn, tenant_id=args.tenant, request=request, created_by=CLI_ACTOR
            )
        print(f"job {job_id}", file=sys.stderr)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as progress:
            bar = progress.add_task("matching", total=None)

            def show(job: dict[str, Any]) -> None:
                done = job["written"] + job["skipped"] + job["failed"]
                progress.update(
                    bar,
                    description="writing" if job["status"] == "running" else job["status"],
                    total=job["matched"] if done or job["matched"] else None,
                    completed=done,
                )

            final = await fleet.run_to_completion(
                pool,
                job_id,
                tenant_id=args.tenant,
                limits=limits,
                stale_after=stale_after,
                on_progress=show,
                workers=args.workers,
                batch_size=args.batch_size,
            )
    finally:
        await pool.close()
    _print_json({key: final[key] for key in _JOB_COUNTS})
    if final["status"] != "done":
        raise SystemExit(1)


# --- parser ----------------------------------------------------------------------------------

DESCRIPTION = """\
iotcloud runs and administers a self-hosted device-twin platform: PostgreSQL (the one source
of truth), a Mosquitto broker, the operator API and console (ui_iot) and the device API with
its MQTT bridge (ingest_iot). With DATABASE_URL and MQTT_URL unset it uses this checkout's
embedded PostgreSQL and broker under .iotcloud/, starting the database when needed."""

COMMON_ENV = """\
environment:
  DATABASE_URL       PostgreSQL to use (default: the embedded one under .iotcloud/pg)
  IOTCLOUD_PG_PORT   port of the embedded PostgreSQL (default 5544, another if taken)
  IOTCLOUD_HOME      where embedded parts keep their files (default ./.iotcloud)
  IOTCLOUD_DEBUG=1   show a traceback when a command fails (else one line, exit status 2)"""


def _command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    summary: str,
    *,
    description: str = "",
    examples: tuple[str, ...] = (),
    env: str = "",
) -> argparse.ArgumentParser:
    """A subcommand whose --help has a description, examples and its environment variables."""
    epilog = []
    if examples:
        epilog.append("examples:\n" + "\n".join(f"  {example}" for example in examples))
    epilog.append(COMMON_ENV + (("\n" + env) if env else ""))
    return sub.add_parser(  # type: ignore[no-any-return]
        name,
        help=summary,
        description=(description or summary[:1].upper() + summary[1:] + "."),
        epilog="\n\n".join(epilog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _group(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    summary: str,
    description: str,
) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    parser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=COMMON_ENV,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")  # type: ignore[no-any-return]


TENANT_HELP = "tenant id (lower-case letters, digits and '-')"
DEVICE_HELP = "device id (letters, digits, '.', '_', ':' or '-'; it is the device's MQTT login)"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too, pointing at the command's --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"iotcloud: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="iotcloud",
        description=DESCRIPTION,
        epilog="examples:\n"
        "  iotcloud up --demo                      everything, with a demo tenant and devices\n"
        "  iotcloud status                         what runs where\n"
        "  iotcloud device list --tenant demo      the devices of a tenant\n"
        "  iotcloud down                           stop what up started\n"
        "\nRun iotcloud COMMAND --help for a command's options.\n\n" + COMMON_ENV,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = _command(
        sub,
        "up",
        "migrate, then run both services (and the embedded database and broker)",
        description="Apply pending migrations, then run ui_iot, ingest_iot and (with MQTT_URL "
        "unset) a private Mosquitto as supervised child processes, restarting one that dies. "
        "Their logs go to .iotcloud/logs/; the banner with the console URL stays on screen. "
        "Stop with Ctrl-C or `iotcloud down`.",
        examples=("iotcloud up --demo", "iotcloud up --verbose", "UI_PORT=9000 iotcloud up"),
        env="  MQTT_URL           broker to use (default: a private Mosquitto on 127.0.0.1:1884)\n"
        "  UI_PORT, INGEST_PORT  service ports (default 8000, 8001)\n"
        "  IOTCLOUD_BROKER_PORT, IOTCLOUD_BROKER_TLS_PORT  embedded broker ports (1884, 8883)\n"
        "  IOTCLOUD_LOG_LEVEL service log level (default warning)",
    )
    up.add_argument("--demo", action="store_true", help="add a demo tenant, login and devices")
    up.add_argument(
        "--verbose",
        action="store_true",
        help="show the broker's and services' logs here too (they always go to .iotcloud/logs/)",
    )
    up.set_defaults(handler=cmd_up)

    down = _command(
        sub,
        "down",
        "stop what `iotcloud up` started, the embedded database included",
        examples=("iotcloud down", "iotcloud down --keep-database"),
    )
    down.add_argument(
        "--keep-database", action="store_true", help="leave the embedded PostgreSQL running"
    )
    down.set_defaults(handler=_lazy("iotcloud.cli_runtime", "cmd_down"))

    status = _command(
        sub,
        "status",
        "say what runs where: up, the database, the broker, both services",
        examples=("iotcloud status", "iotcloud status --json"),
    )
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(handler=_lazy("iotcloud.cli_runtime", "cmd_status"))

    _command(
        sub,
        "migrate",
        "apply pending migrations (safe to run from several replicas at once)",
        examples=("iotcloud migrate", "DATABASE_URL=postgresql://iot@db/iotcloud iotcloud migrate"),
    ).set_defaults(handler=cmd_migrate)

    tenant = _group(sub, "tenant", "create tenants", "Tenants: each fleet and its operators.")
    tenant_create = _command(
        tenant,
        "create",
        "create a tenant; prints its id",
        examples=("iotcloud tenant create acme --name 'Acme Corp'",),
    )
    tenant_create.add_argument("id", help=TENANT_HELP)
    tenant_create.add_argument("--name", help="display name (default: the id)")
    tenant_create.set_defaults(handler=cmd_tenant_create)

    user = _group(
        sub,
        "user",
        "operator accounts",
        "Operator accounts: an e-mail, a password (stored only as a hash) and a role.",
    )
    user_create = _command(
        user,
        "create",
        "create an operator account",
        description="Create an operator account. The password comes from --password-stdin, "
        "a prompt when standard input is a terminal, or --password (visible in the process "
        "list and shell history: avoid it).",
        examples=(
            "iotcloud user create --tenant acme --email ops@acme.test --role operator",
            "printf '%s\\n' \"$PASSWORD\" | iotcloud user create --tenant acme "
            "--email ci@acme.test --password-stdin --role viewer",
        ),
    )
    user_create.add_argument("--tenant", required=True, help=TENANT_HELP)
    user_create.add_argument("--email", required=True, help="the login, an e-mail address")
    user_create.add_argument("--password", help="at least 8 characters (prefer --password-stdin)")
    user_create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    user_create.add_argument(
        "--role",
        choices=["admin", "operator", "viewer"],
        default="admin",
        help="viewer reads; operator also writes desired state; admin also manages devices "
        "and users (default admin)",
    )
    user_create.set_defaults(handler=cmd_user_create)

    token = _command(
        sub,
        "token",
        "print a bearer token for a user (for scripts)",
        examples=(
            "TOKEN=$(iotcloud token --email ops@acme.test)",
            'curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/customer/devices',
        ),
        env="  IOTCLOUD_JWT_SECRET  signing secret (default: kept in .iotcloud/jwt.secret)",
    )
    token.add_argument("--email", required=True, help="the user's e-mail")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token.set_defaults(handler=cmd_token)

    device = _group(
        sub,
        "device",
        "register, list, show, delete devices and rotate their tokens",
        "Devices of one tenant. A device id is unique across all tenants: it is the device's "
        "MQTT user name and client id (and its AWS IoT thing name), so an id taken anywhere "
        "is refused with the same message, whoever holds it.",
    )
    device_create = _command(
        device,
        "create",
        "register a device; prints its provision token once",
        examples=(
            "iotcloud device create --tenant acme --id boiler-1 --name 'Boiler, basement'",
            "iotcloud device create --tenant acme      # a generated id",
        ),
    )
    device_create.add_argument("--tenant", required=True, help=TENANT_HELP)
    device_create.add_argument("--id", help=DEVICE_HELP + " (default: dev-<random>)")
    device_create.add_argument("--name", help="display name (default: the id)")
    device_create.set_defaults(handler=cmd_device_create)

    device_list = _command(
        device,
        "list",
        "list a tenant's devices with their sync status",
        examples=(
            "iotcloud device list --tenant acme",
            "iotcloud device list --tenant acme --status pending --tag site:berlin --json",
        ),
    )
    device_list.add_argument("--tenant", required=True, help=TENANT_HELP)
    device_list.add_argument(
        "--status", choices=["synced", "pending", "stale"], help="devices in this sync status"
    )
    device_list.add_argument("--tag", action="append", help="key:value (repeat to AND)")
    device_list.add_argument("--q", help="text in the device id or name")
    device_list.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    device_list.add_argument("--json", action="store_true", help="print JSON for scripts")
    device_list.set_defaults(handler=_with_db("iotcloud.cli_devices", "device_list"))

    for name, summary, function, examples in (
        (
            "show",
            "show a device's twin: desired, reported, delta, versions",
            "device_show",
            (
                "iotcloud device show --tenant acme boiler-1",
                "iotcloud device show --tenant acme boiler-1 --json",
            ),
        ),
        (
            "delete",
            "delete a device: its token stops working and its MQTT session is cut",
            "device_delete",
            ("iotcloud device delete --tenant acme boiler-1",),
        ),
        (
            "rotate-token",
            "give a device a new provision token (printed once); the old one stops working",
            "device_rotate_token",
            ("iotcloud device rotate-token --tenant acme boiler-1 --json",),
        ),
    ):
        command = _command(device, name, summary, examples=examples)
        command.add_argument("id", help=DEVICE_HELP)
        command.add_argument("--tenant", required=True, help=TENANT_HELP)
        command.add_argument("--json", action="store_true", help="print JSON for scripts")
        command.set_defaults(handler=_with_db("iotcloud.cli_devices", function))

    device_import = _command(
        device,
        "import",
        "register the devices of a CSV (device_id,name,tags); tokens once",
        examples=("iotcloud device import --tenant acme fleet.csv --out tokens.csv",),
    )
    device_import.add_argument("--tenant", required=True, help=TENANT_HELP)
    device_import.add_argument("file", help="CSV with the header device_id,name,tags")
    device_import.add_argument("--out", help="write device_id,provision_token here (mode 0600)")
    device_import.add_argument("--force", action="store_true", help="overwrite --out")
    device_import.set_defaults(handler=cmd_device_import)

    serve = _command(
        sub,
        "serve",
        "run one service (what a replica runs)",
        examples=("iotcloud serve ui --host 0.0.0.0", "iotcloud serve ingest --port 8101"),
        env="  MQTT_URL, IOTCLOUD_JWT_SECRET, IOTCLOUD_LOG_LEVEL: see docs/operations.md",
    )
    serve.add_argument("service", choices=["ui", "ingest"], help="ui_iot or ingest_iot")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, help="port (default UI_PORT / INGEST_PORT)")
    serve.set_defaults(handler=cmd_serve)

    simulate = _command(
        sub,
        "simulate",
        "run simulated devices that speak MQTT or HTTP",
        examples=(
            "iotcloud simulate --tenant demo --devices 10 --rate 1",
            "iotcloud simulate --tenant demo --http --duration 60",
        ),
        env="  MQTT_URL           broker the devices connect to",
    )
    simulate.add_argument("--tenant", required=True, help=TENANT_HELP)
    simulate.add_argument("--devices", type=int, default=3, help="how many (default 3)")
    simulate.add_argument(
        "--rate", type=float, default=0.0, help="extra reports per second per device"
    )
    simulate.add_argument(
        "--burst",
        type=int,
        default=0,
        help="readings each device sends back to back once all are connected (MQTT); "
        "with no --duration the run ends when all are sent",
    )
    simulate.add_argument(
        "--resend-after",
        type=float,
        default=5.0,
        help="seconds without /accepted before the latest report is sent again "
        "(docs/devices.md); 0: never (a broker with no platform behind it answers nothing)",
    )
    simulate.add_argument("--http", action="store_true", help="poll and report over HTTP instead")
    simulate.add_argument(
        "--http-url",
        default=f"http://127.0.0.1:{env_port('INGEST_PORT', 8001)}",
        help="device API base URL for --http",
    )
    simulate.add_argument(
        "--duration", type=float, default=0.0, help="seconds; 0 runs until stopped"
    )
    simulate.add_argument("--prefix", default="sim", help="device id prefix")
    simulate.add_argument(
        "--apply-delay",
        type=float,
        default=0.0,
        help="seconds a device takes to apply desired state",
    )
    simulate.add_argument(
        "--progress-every", type=float, default=2.0, help="seconds between progress lines"
    )
    simulate.set_defaults(handler=cmd_simulate)

    fleet = _group(sub, "fleet", "fleet operations", "Operations on many devices at once.")
    set_desired = _command(
        fleet,
        "set-desired",
        "merge-patch desired on every matching device (a bulk job)",
        description="Queue a bulk job that merge-patches desired state on every matching "
        "device, run it here with a progress bar and print its counts. Exit status 1 when "
        "some device refused the write.",
        examples=(
            "iotcloud fleet set-desired --tenant acme --tag site:berlin --desired '{\"fan\": 3}'",
            "iotcloud fleet set-desired --tenant acme --device d-1 --device d-2 "
            "--desired '{\"led\": null}'",
        ),
        env="  IOTCLOUD_MAX_STATE_BYTES, IOTCLOUD_MAX_DEPTH, IOTCLOUD_STALE_AFTER_S: twin limits",
    )
    set_desired.add_argument("--tenant", required=True, help=TENANT_HELP)
    set_desired.add_argument("--desired", required=True, help="JSON merge patch")
    set_desired.add_argument("--tag", action="append", help="key:value (repeat to AND)")
    set_desired.add_argument(
        "--status", choices=["synced", "pending", "stale"], help="devices in this sync status"
    )
    set_desired.add_argument("--model", help="devices of this model")
    set_desired.add_argument("--device", action="append", help="this device id (repeatable)")
    set_desired.add_argument("--q", help="text in the device id or name")
    set_desired.add_argument("--workers", type=int, default=4, help="concurrent batches")
    set_desired.add_argument("--batch-size", type=int, default=500, help="devices per batch")
    set_desired.set_defaults(handler=cmd_fleet_set_desired)

    completion = _command(
        sub,
        "completion",
        "print a shell completion script",
        examples=('eval "$(iotcloud completion bash)"   # in ~/.bashrc',),
    )
    completion.add_argument("shell", choices=["bash"], help="the shell")
    completion.set_defaults(handler=_lazy("iotcloud.cli_completion", "cmd_completion"))
    return parser


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], Any]:
    """A handler imported when it runs (keeps ``iotcloud --help`` fast)."""

    def handler(args: argparse.Namespace) -> Any:
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return handler


def _with_db(module: str, name: str) -> Callable[[argparse.Namespace], Awaitable[Any]]:
    """A handler ``async (args, conn)`` run on a connection to a migrated database."""

    async def handler(args: argparse.Namespace) -> Any:
        import importlib

        function = getattr(importlib.import_module(module), name)

        async def work(conn: Any) -> Any:
            await db.migrate(conn)
            return await function(args, conn)

        return await _with_conn(work)

    return handler


def _failure_line(exc: BaseException) -> str:
    """One line for any failure (an exception group: its first leaf)."""
    from iotcloud import cli_failures

    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, DomainError):
        return str(exc.detail)
    if isinstance(exc, _one_line_errors()):
        return " ".join(str(exc).split())
    line = cli_failures.database_failure(exc, _LAST_DATABASE_URL)
    if line is not None:
        return line
    try:
        from aiomqtt import MqttError
    except ImportError:  # pragma: no cover - a dependency
        MqttError = ()  # type: ignore[assignment,misc]
    if isinstance(exc, MqttError):
        return cli_failures.broker_failure(exc, mqtt_display())
    return cli_failures.unexpected(exc)


def main(argv: list[str] | None = None) -> int:
    from iotcloud.cli_failures import debug

    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
        if isinstance(result, Coroutine):
            # uvloop, as the services run: the simulator's thousands of connections need it.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(result)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except Exception as exc:
        if debug():
            raise
        print(f"iotcloud: {_failure_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
