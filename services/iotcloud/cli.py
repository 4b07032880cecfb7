"""``iotcloud``: the product's command line (SPEC §2)."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

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
MAX_TOKEN_TTL_S = 30 * 24 * 3600


class CliError(Exception):
    pass


def embedded_postgres() -> embedded.EmbeddedPostgres:
    return embedded.EmbeddedPostgres(project_home(), env_port("IOTCLOUD_PG_PORT", DEFAULT_PG_PORT))


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


def database_url() -> str:
    """``DATABASE_URL``, or this checkout's embedded PostgreSQL (started if needed)."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        return configured
    return embedded_postgres().ensure_running()


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


print_json = _print_json


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
    from shared.ids import is_tenant_id
    from shared.repositories import tenants

    if not is_tenant_id(args.id):
        raise CliError("tenant id must match [a-z0-9][a-z0-9-]{0,62}")

    async def work(conn: Any) -> bool:
        await db.migrate(conn)
        return await tenants.insert(conn, args.id, args.name or args.id)

    if not await _with_conn(work):
        raise CliError(f"tenant {args.id!r} already exists")
    print(args.id)


async def cmd_user_create(args: argparse.Namespace) -> None:
    from shared.repositories import tenants, users
    from shared.security import hash_password
    from shared.services import audit

    if len(args.password) < 8:
        raise CliError("password must be at least 8 characters")
    if "@" not in args.email:
        raise CliError("email must be an e-mail address")

    async def work(conn: Any) -> int | None:
        await db.migrate(conn)
        if not await tenants.exists(conn, args.tenant):
            raise CliError(f"no tenant {args.tenant!r}")
        async with conn.transaction():
            user_id = await users.insert(
                conn,
                tenant_id=args.tenant,
                email=args.email,
                password_hash=hash_password(args.password),
                role=args.role,
            )
            if user_id is not None:
                await audit.record(
                    conn,
                    CLI_ACTOR,
                    "user.create",
                    args.email,
                    {"role": args.role},
                    tenant_id=args.tenant,
                )
            return user_id

    user_id = await _with_conn(work)
    if user_id is None:
        raise CliError(f"a user with e-mail {args.email!r} already exists")
    _print_json(
        {"user_id": user_id, "tenant_id": args.tenant, "email": args.email, "role": args.role}
    )


async def cmd_token(args: argparse.Namespace) -> None:
    from shared.repositories import users
    from shared.security import Principal, issue_token
    from shared.services import audit

    if not 1 <= args.ttl <= MAX_TOKEN_TTL_S:
        raise CliError(f"--ttl must be from 1 to {MAX_TOKEN_TTL_S} seconds")
    user = await _with_conn(lambda conn: users.by_email(conn, args.email))
    if user is None:
        raise CliError(f"no user with e-mail {args.email!r}")
    if user["disabled"]:
        raise CliError(f"user {args.email!r} is disabled")
    who = Principal(
        user["user_id"], user["email"], user["tenant_id"], user["role"], user["token_version"]
    )
    token = issue_token(who, secret=jwt_secret(), ttl_s=args.ttl)
    await _with_conn(
        lambda conn: audit.record(
            conn,
            CLI_ACTOR,
            "auth.token_issued",
            who.email,
            {"ttl_s": args.ttl},
            tenant_id=who.tenant_id,
        )
    )
    print(token)


async def cmd_device_create(args: argparse.Namespace) -> None:
    from iotcloud.provisioning import create_devices

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

    await up(demo=args.demo)


async def cmd_simulate(args: argparse.Namespace) -> None:
    from iotcloud.simulator import simulate

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
    from shared.services import audit, fleet

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
            await audit.record(
                conn,
                CLI_ACTOR,
                "bulk_job.create",
                job_id,
                {"filter": filter_document},
                tenant_id=args.tenant,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotcloud", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="migrate, then run both services (and embedded parts)")
    up.add_argument("--demo", action="store_true", help="add a demo tenant, login and devices")
    up.set_defaults(handler=cmd_up)

    sub.add_parser("migrate", help="apply pending migrations").set_defaults(handler=cmd_migrate)

    tenant = sub.add_parser("tenant", help="tenants").add_subparsers(dest="action", required=True)
    tenant_create = tenant.add_parser("create", help="create a tenant")
    tenant_create.add_argument("id")
    tenant_create.add_argument("--name")
    tenant_create.set_defaults(handler=cmd_tenant_create)

    user = sub.add_parser("user", help="operator accounts").add_subparsers(
        dest="action", required=True
    )
    user_create = user.add_parser("create", help="create an operator account")
    user_create.add_argument("--tenant", required=True)
    user_create.add_argument("--email", required=True)
    user_create.add_argument("--password", required=True)
    user_create.add_argument("--role", choices=["admin", "operator", "viewer"], default="admin")
    user_create.set_defaults(handler=cmd_user_create)

    token = sub.add_parser("token", help="print a bearer token for a user")
    token.add_argument("--email", required=True)
    token.add_argument("--ttl", type=int, default=3600, help="seconds (default 3600)")
    token.set_defaults(handler=cmd_token)

    device = sub.add_parser("device", help="devices").add_subparsers(dest="action", required=True)
    device_create = device.add_parser("create", help="register a device; prints its token once")
    device_create.add_argument("--tenant", required=True)
    device_create.add_argument("--id")
    device_create.add_argument("--name")
    device_create.set_defaults(handler=cmd_device_create)
    device_import = device.add_parser(
        "import", help="register the devices of a CSV (device_id,name,tags); tokens once"
    )
    device_import.add_argument("--tenant", required=True)
    device_import.add_argument("file", help="CSV with the header device_id,name,tags")
    device_import.add_argument("--out", help="write device_id,provision_token here (mode 0600)")
    device_import.add_argument("--force", action="store_true", help="overwrite --out")
    device_import.set_defaults(handler=cmd_device_import)

    serve = sub.add_parser("serve", help="run one service (what a replica runs)")
    serve.add_argument("service", choices=["ui", "ingest"])
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int)
    serve.set_defaults(handler=cmd_serve)

    simulate = sub.add_parser("simulate", help="run simulated devices that speak MQTT or HTTP")
    simulate.add_argument("--tenant", required=True)
    simulate.add_argument("--devices", type=int, default=3)
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
    simulate.add_argument("--http-url", default=f"http://127.0.0.1:{env_port('INGEST_PORT', 8001)}")
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

    fleet = sub.add_parser("fleet", help="fleet operations").add_subparsers(
        dest="action", required=True
    )
    set_desired = fleet.add_parser(
        "set-desired", help="merge-patch desired on every matching device (a bulk job)"
    )
    set_desired.add_argument("--tenant", required=True)
    set_desired.add_argument("--desired", required=True, help="JSON merge patch")
    set_desired.add_argument("--tag", action="append", help="key:value (repeat to AND)")
    set_desired.add_argument("--status", choices=["synced", "pending", "stale"])
    set_desired.add_argument("--model", help="devices of this model")
    set_desired.add_argument("--device", action="append", help="this device id (repeatable)")
    set_desired.add_argument("--q", help="text in the device id or name")
    set_desired.add_argument("--workers", type=int, default=4, help="concurrent batches")
    set_desired.add_argument("--batch-size", type=int, default=500, help="devices per batch")
    set_desired.set_defaults(handler=cmd_fleet_set_desired)

    from iotcloud import cli_admin

    cli_admin.register(user, tenant)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
        if isinstance(result, Coroutine):
            # uvloop, as the services run: the simulator's thousands of connections need it.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(result)
    except (CliError, embedded.EmbeddedError, ValueError, ProvisioningError, SettingsError) as exc:
        print(f"iotcloud: {exc}", file=sys.stderr)
        return 2
    except DomainError as exc:
        print(f"iotcloud: {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
