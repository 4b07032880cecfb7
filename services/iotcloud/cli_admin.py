"""``iotcloud user list|set-role|disable|delete`` and ``iotcloud tenant list|delete`` (SPEC
§10): the same rules as the users API (the tenant's last enabled admin is kept), audited as
``iotcloud-cli``."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from shared import db
from shared.repositories import tenants
from shared.repositories import users as users_repo
from shared.security import ROLES
from shared.services import audit

CLI_ACTOR = "iotcloud-cli"


class AdminError(ValueError):
    """A refused command; the CLI prints it and exits 2 (as for every ValueError)."""


async def _user(conn: Any, email: str) -> Any:
    user = await users_repo.by_email(conn, email)
    if user is None:
        raise AdminError(f"no user with e-mail {email!r}")
    return user


async def _keep_last_admin(conn: Any, user: Any, what: str) -> None:
    admins = await users_repo.lock_tenant_admins(conn, user["tenant_id"])
    if admins == [user["user_id"]]:
        raise AdminError(
            f"cannot {what} {user['email']}: the last enabled admin of tenant {user['tenant_id']}"
        )


def _user_json(row: Any) -> dict[str, Any]:
    return {
        "user_id": row["user_id"],
        "tenant_id": row["tenant_id"],
        "email": row["email"],
        "role": row["role"],
        "disabled": row["disabled"],
        "created_at": row["created_at"].isoformat(),
        "last_login_at": row["last_login_at"].isoformat() if row["last_login_at"] else None,
    }


async def user_list(conn: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    await db.migrate(conn)
    if args.tenant and not await tenants.exists(conn, args.tenant):
        raise AdminError(f"no tenant {args.tenant!r}")
    return [_user_json(row) for row in await users_repo.list_all(conn, args.tenant)]


async def user_set_role(conn: Any, args: argparse.Namespace) -> dict[str, Any]:
    if args.role not in ROLES:
        raise AdminError(f"role must be one of {', '.join(ROLES)}")
    async with conn.transaction():
        user = await _user(conn, args.email)
        if args.role != "admin":
            await _keep_last_admin(conn, user, "demote")
        row = await users_repo.update(
            conn,
            tenant_id=user["tenant_id"],
            user_id=user["user_id"],
            role=args.role,
            disabled=None,
        )
        await audit.record(
            conn,
            CLI_ACTOR,
            "user.set_role",
            user["email"],
            {"from": user["role"], "to": args.role},
            tenant_id=user["tenant_id"],
        )
    return _user_json(row)


async def user_disable(conn: Any, args: argparse.Namespace) -> dict[str, Any]:
    async with conn.transaction():
        user = await _user(conn, args.email)
        if not args.enable:
            await _keep_last_admin(conn, user, "disable")
        row = await users_repo.update(
            conn,
            tenant_id=user["tenant_id"],
            user_id=user["user_id"],
            role=None,
            disabled=not args.enable,
        )
        await audit.record(
            conn,
            CLI_ACTOR,
            "user.enable" if args.enable else "user.disable",
            user["email"],
            tenant_id=user["tenant_id"],
        )
    return _user_json(row)


async def user_delete(conn: Any, args: argparse.Namespace) -> dict[str, Any]:
    async with conn.transaction():
        user = await _user(conn, args.email)
        await _keep_last_admin(conn, user, "delete")
        await users_repo.delete(conn, tenant_id=user["tenant_id"], user_id=user["user_id"])
        await audit.record(
            conn,
            CLI_ACTOR,
            "user.delete",
            user["email"],
            {"user_id": user["user_id"]},
            tenant_id=user["tenant_id"],
        )
    return {"deleted": user["email"], "tenant_id": user["tenant_id"]}


async def tenant_list(conn: Any, _args: argparse.Namespace) -> list[dict[str, Any]]:
    await db.migrate(conn)
    return [
        {
            "tenant_id": row["tenant_id"],
            "name": row["name"],
            "created_at": row["created_at"].isoformat(),
            "users": row["users"],
            "devices": row["devices"],
        }
        for row in await tenants.list_with_counts(conn)
    ]


async def tenant_delete(conn: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Without ``--yes`` nothing is deleted: the answer says what would be."""
    async with conn.transaction():
        if not await tenants.lock(conn, args.id):
            raise AdminError(f"no tenant {args.id!r}")
        removed = await tenants.contents(conn, args.id)
        if not args.yes:
            raise AdminError(
                f"tenant {args.id!r} holds "
                + ", ".join(f"{count} {what}" for what, count in removed.items())
                + "; run again with --yes to delete it and all of that"
            )
        await tenants.delete(conn, args.id)
    return {"deleted": args.id, "removed": removed}


Handler = Callable[[Any, argparse.Namespace], Awaitable[Any]]


def run(handler: Handler) -> Callable[[argparse.Namespace], Awaitable[None]]:
    """A CLI command of ``handler(conn, args)``: prints its answer as JSON, a line per item."""

    async def command(args: argparse.Namespace) -> None:
        from iotcloud.cli import database_url, print_json

        conn = await db.connect(database_url(), application_name="iotcloud-cli")
        try:
            result = await handler(conn, args)
        finally:
            await conn.close()
        for item in result if isinstance(result, list) else [result]:
            print_json(item)

    return command


def register(user: Any, tenant: Any, command: Any, tenant_help: str) -> None:
    """Add the commands to the ``user`` and ``tenant`` sub-parsers; ``command`` makes a
    sub-command with description, examples and environment (``iotcloud.cli._command``)."""
    listing = command(
        user,
        "list",
        "list operator accounts (JSON lines)",
        examples=("iotcloud user list", "iotcloud user list --tenant acme"),
    )
    listing.add_argument("--tenant", help=f"only this tenant's; {tenant_help}")
    listing.set_defaults(handler=run(user_list))
    set_role = command(
        user,
        "set-role",
        "change a user's role (takes effect at once)",
        description=(
            "Change a user's role. Tokens already issued carry the new role from their next "
            "request on; the tenant's last enabled admin cannot be demoted."
        ),
        examples=("iotcloud user set-role ops@acme.test viewer",),
    )
    set_role.add_argument("email", help="the user's e-mail")
    set_role.add_argument("role", choices=list(ROLES), help="the new role")
    set_role.set_defaults(handler=run(user_set_role))
    disable = command(
        user,
        "disable",
        "disable a user: their tokens stop working",
        examples=(
            "iotcloud user disable ops@acme.test",
            "iotcloud user disable --enable ops@acme.test",
        ),
    )
    disable.add_argument("email", help="the user's e-mail")
    disable.add_argument("--enable", action="store_true", help="enable the user again instead")
    disable.set_defaults(handler=run(user_disable))
    delete = command(
        user,
        "delete",
        "delete a user: their tokens stop working",
        examples=("iotcloud user delete ops@acme.test",),
    )
    delete.add_argument("email", help="the user's e-mail")
    delete.set_defaults(handler=run(user_delete))
    tenant_listing = command(
        tenant,
        "list",
        "list tenants with their user and device counts",
        examples=("iotcloud tenant list",),
    )
    tenant_listing.set_defaults(handler=run(tenant_list))
    remove = command(
        tenant,
        "delete",
        "delete a tenant: its devices (sessions cut), users, models and jobs",
        description=(
            "Delete a tenant with everything it holds: devices (their credentials stop "
            "working and their broker sessions are cut), users, models, jobs and rollouts. "
            "Without --yes it only shows what would go."
        ),
        examples=("iotcloud tenant delete acme", "iotcloud tenant delete acme --yes"),
    )
    remove.add_argument("id", help=tenant_help)
    remove.add_argument("--yes", action="store_true", help="really delete (else: show what)")
    remove.set_defaults(handler=run(tenant_delete))
