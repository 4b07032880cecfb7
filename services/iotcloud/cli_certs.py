"""``iotcloud device cert``: a device key, its certificate from the tenant's device CA, and
the CA file a device trusts the broker with (SPEC §9)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from shared import db, device_certs, device_trust
from shared.repositories import tenants
from shared.services import audit, certificates
from shared.settings import project_home

FILES = ("device.key", "device.pem", "ca.pem")


class CertError(ValueError):
    pass


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def server_ca_pem() -> str | None:
    """What a device trusts the broker's server certificate with (AWS's AmazonRootCA1):
    the private CA ``iotcloud up`` made, or ``IOTCLOUD_TLS_CA``; None for a public CA."""
    from shared.tls import ensure_server_certificate

    files = ensure_server_certificate(project_home())
    return files.ca.read_text() if files.ca is not None else None


async def issue_files(database_url: str, *, tenant_id: str, device_id: str) -> dict[str, str]:
    """The three files' contents; the certificate is stored (and trusted) before they exist."""
    from iotcloud.cli import CLI_ACTOR

    key_pem, csr_pem = device_certs.new_device_key_and_csr(device_id)
    passphrase = device_trust.ca_passphrase()
    conn = await db.connect(database_url, application_name="iotcloud-cli")
    try:
        async with conn.transaction():
            if not await tenants.exists(conn, tenant_id):
                raise CertError(f"no tenant {tenant_id!r}")
            issued = await certificates.issue(
                conn,
                tenant_id=tenant_id,
                device_id=device_id,
                csr_pem=csr_pem,
                passphrase=passphrase,
            )
            await audit.record(
                conn,
                CLI_ACTOR,
                "certificate.issue",
                device_id,
                {"certificate_id": issued.certificate_id},
                tenant_id=tenant_id,
            )
    finally:
        await conn.close()
    await asyncio.to_thread(device_trust.add, issued.trust)
    ca_pem = await asyncio.to_thread(server_ca_pem)
    files = {
        "device.key": key_pem,
        "device.pem": issued.certificate_pem,
        "certificate_id": issued.certificate_id,
    }
    if ca_pem is not None:
        files["ca.pem"] = ca_pem
    return files


def _existing(out: Path) -> list[str]:
    return [name for name in FILES if (out / name).exists()]


def _write_files(out: Path, files: dict[str, str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FILES:
        if name in files:
            _write(out / name, files[name], 0o600 if name == "device.key" else 0o644)
            written.append(out / name)
    return written


async def cmd_device_cert(args: argparse.Namespace, database_url: str) -> None:
    out = Path(args.out)
    existing = await asyncio.to_thread(_existing, out)
    if existing and not args.force:
        raise CertError(f"{out} already holds {', '.join(existing)} (use --force to replace)")
    files = await issue_files(database_url, tenant_id=args.tenant, device_id=args.device)
    written = await asyncio.to_thread(_write_files, out, files)
    print(f"certificate {files['certificate_id']} for device {args.device}")
    for path in written:
        print(f"  {path}")
    if "ca.pem" not in files:
        print("  (no ca.pem: the broker's certificate is from a public CA the device trusts)")


def register(
    device: argparse._SubParsersAction[argparse.ArgumentParser],
    command: Any,
    tenant_help: str,
    device_help: str,
) -> argparse.ArgumentParser:
    """Add ``device cert``; ``command`` makes a sub-command with description, examples and
    environment in its --help (``iotcloud.cli._command``)."""
    parser: argparse.ArgumentParser = command(
        device,
        "cert",
        "issue a device certificate: writes device.key, device.pem and ca.pem",
        description=(
            "Issue an X.509 certificate for a device, signed by its tenant's device CA (made "
            "on first use). The private key is made here and never leaves this machine; the "
            "device connects with it over mutual TLS (docs/aws-migration.md)."
        ),
        examples=("iotcloud device cert --tenant acme --device pump-7 --out ./pump-7-cert",),
    )
    parser.add_argument("--tenant", required=True, help=tenant_help)
    parser.add_argument("--device", required=True, help=device_help)
    parser.add_argument("--out", required=True, help="directory for the three files")
    parser.add_argument("--force", action="store_true", help="replace files already there")
    return parser


async def sync_trust_store(conn: db.Connection) -> None:
    """At ``iotcloud up``: the broker's client trust store holds what the database says
    (every tenant's device CA, every registered self-signed certificate)."""
    await asyncio.to_thread(device_trust.add, await certificates.trust_store_contents(conn))
