"""``iotcloud fleet rollout``: a staged, health-gated rollout (SPEC §11) with live progress.

The rollout is created as ``POST /customer/fleet/rollouts`` creates it and driven from here
(a ui_iot replica's runner may share the work: the rollout's row lock keeps it exactly once);
it survives this process: a runner picks it up where it stopped.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import orjson

from shared import db
from shared import settings as env_settings

_HEALTH = re.compile(r"^\s*(\S+)\s*(==|!=|<=|>=|<|>|\bin\b)\s*(.+?)\s*$")


class RolloutCliError(ValueError):
    """Bad arguments: reported as ``iotcloud: ...`` with exit status 2."""


def parse_health(text: str) -> dict[str, Any]:
    """``'/reported/health == "ok"'``: a pointer, an operator, a JSON value."""
    match = _HEALTH.match(text)
    if match is None:
        raise RolloutCliError(
            f"--health {text!r}: expected POINTER OP JSON, e.g. '/reported/health == \"ok\"'"
        )
    pointer, op, raw = match.groups()
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RolloutCliError(f"--health value {raw!r} is not JSON: {exc}") from exc
    return {"pointer": pointer, "op": op, "value": value}


def parse_stages(text: str) -> list[Any]:
    """``1,10,50,100`` (percentages) or with counts as ``count:N``."""
    stages: list[Any] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if part.startswith("count:"):
                stages.append({"count": int(part.removeprefix("count:"))})
            else:
                number = float(part.removesuffix("%"))
                stages.append(int(number) if number.is_integer() else number)
        except ValueError as exc:
            raise RolloutCliError(f"--stages: {part!r} is not a percentage or count:N") from exc
    return stages


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    try:
        desired = orjson.loads(args.desired)
    except orjson.JSONDecodeError as exc:
        raise RolloutCliError(f"--desired is not valid JSON: {exc}") from exc
    filter_document: dict[str, Any] = {}
    if args.tag:
        filter_document["tag"] = args.tag
    if args.device:
        filter_document["device_ids"] = args.device
    success: dict[str, Any] = {"synced_ratio": args.synced_ratio, "within_s": args.within}
    if args.health:
        success["health"] = parse_health(args.health)
    return {
        "filter": filter_document,
        "desired": desired,
        "stages": parse_stages(args.stages),
        "success": success,
        "on_failure": args.on_failure,
    }


def _line(document: dict[str, Any]) -> str:
    parts = []
    for stage in document["stages"]:
        parts.append(
            f"[{stage['stage']}] {stage['written']}/{stage['devices']} written,"
            f" {stage['synced']} synced, {stage['rejected']} rejected,"
            f" {stage['unhealthy']} unhealthy ({stage['status']})"
        )
    return f"{document['state']}: " + "; ".join(parts)


async def cmd_fleet_rollout(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from iotcloud.cli import CLI_ACTOR, database_url
    from shared.repositories import tenants
    from shared.services import audit, rollouts

    limits = env_settings.limits()
    stale_after = env_settings.stale_after()
    request = rollouts.parse_request(request_body(args), limits)
    pool = await db.create_pool(database_url(), application_name="iotcloud-rollout")
    try:
        async with db.transaction(pool) as conn:
            await db.migrate(conn)
            if not await tenants.exists(conn, args.tenant):
                raise RolloutCliError(f"no tenant {args.tenant!r}")
            rollout_id = await rollouts.create(
                conn,
                tenant_id=args.tenant,
                request=request,
                created_by=CLI_ACTOR,
                stale_after=stale_after,
            )
            await audit.record(
                conn,
                CLI_ACTOR,
                "rollout.create",
                rollout_id,
                rollouts.audit_detail(request),
                tenant_id=args.tenant,
            )
        print(f"rollout {rollout_id}", file=sys.stderr, flush=True)
        console = Console(stderr=True)

        def table(document: dict[str, Any]) -> Table:
            view = Table(title=f"rollout {rollout_id}: {document['state']}")
            for column in (
                "stage",
                "target",
                "progress",
                "written",
                "synced",
                "rejected",
                "unhealthy",
                "status",
            ):
                view.add_column(column)
            for stage in document["stages"]:
                total = stage["devices"] or 1
                filled = round(20 * stage["written"] / total)
                view.add_row(
                    str(stage["stage"]),
                    orjson.dumps(stage["target"]).decode(),
                    "█" * filled + "░" * (20 - filled),
                    f"{stage['written']}/{stage['devices']}",
                    str(stage["synced"]),
                    str(stage["rejected"]),
                    str(stage["unhealthy"]),
                    stage["status"],
                )
            return view

        with Live(console=console, auto_refresh=False, transient=not console.is_terminal) as live:

            def show(document: dict[str, Any]) -> None:
                if console.is_terminal:
                    live.update(table(document), refresh=True)
                else:
                    print(_line(document), file=sys.stderr, flush=True)

            final = await rollouts.follow(
                pool,
                rollout_id,
                tenant_id=args.tenant,
                limits=limits,
                on_progress=show,
                batch_size=args.batch_size,
            )
    finally:
        await pool.close()
    sys.stdout.write(
        orjson.dumps(
            {"rollout_id": rollout_id, "state": final["state"], "reason": final["reason"]}
        ).decode()
        + "\n"
    )
    if final["state"] != "done":
        raise SystemExit(1)


def add_parser(fleet: Any, command: Any, tenant_help: str) -> None:
    """Register ``fleet rollout`` on the ``fleet`` subcommand group; ``command`` makes a
    sub-command with description, examples and environment (``iotcloud.cli._command``)."""
    rollout = command(
        fleet,
        "rollout",
        "a staged, health-gated desired rollout",
        description=(
            "Write a desired patch to the matching devices in stages (a stable random sample "
            "of the filter): the next stage starts only when the stage's devices are synced "
            "(--synced-ratio within --within seconds) and healthy (--health); otherwise the "
            "rollout pauses or reverts (--on-failure). Shows progress until it ends; Ctrl-C "
            "leaves it running in the service."
        ),
        examples=(
            'iotcloud fleet rollout --tenant acme --tag site:berlin --desired \'{"fw": "2.1"}\' '
            "--stages 1,10,50,100 --synced-ratio 0.95 --within 600 "
            "--health '/reported/health == \"ok\"' --on-failure revert",
        ),
    )
    rollout.add_argument("--tenant", required=True, help=tenant_help)
    rollout.add_argument("--desired", required=True, help="JSON merge patch")
    rollout.add_argument("--tag", action="append", help="key:value (repeat to AND)")
    rollout.add_argument("--device", action="append", help="this device id (repeatable)")
    rollout.add_argument(
        "--stages", required=True, help="cumulative percentages, e.g. 1,10,50,100 (count:N)"
    )
    rollout.add_argument(
        "--synced-ratio", type=float, default=0.95, help="share of a stage that must sync"
    )
    rollout.add_argument("--within", type=float, default=600, help="seconds per stage gate")
    rollout.add_argument("--health", help="e.g. '/reported/health == \"ok\"'")
    rollout.add_argument(
        "--on-failure",
        choices=["pause", "revert"],
        default="pause",
        help="what a failed stage does (default pause)",
    )
    rollout.add_argument("--batch-size", type=int, default=500, help="devices per batch")
    rollout.set_defaults(handler=cmd_fleet_rollout)
