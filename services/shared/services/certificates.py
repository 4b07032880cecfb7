"""Device certificates (SPEC §9): issue from a CSR, register an existing one, list, revoke.

Runs inside the caller's transaction and never commits. What goes into the broker's trust
store is returned to the caller, which writes it after the commit (``shared.device_trust``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared import device_certs
from shared.db import Connection
from shared.device_certs import CertificateRefused, DeviceCa
from shared.errors import Conflict, NotFound, Unprocessable
from shared.repositories import certificates as repo

CERTIFICATE_ID = re.compile(r"\A[0-9A-Fa-f]{64}\Z")


@dataclass(frozen=True, slots=True)
class Issued:
    """A stored certificate, and the PEMs the broker must trust for it to be presented."""

    certificate_id: str
    certificate_pem: str
    ca_pem: str | None
    trust: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "certificate_id": self.certificate_id,
            "certificate_pem": self.certificate_pem,
            "ca_pem": self.ca_pem,
        }


async def _require_device(conn: Connection, tenant_id: str, device_id: str) -> None:
    if not await repo.live_device_exists(conn, tenant_id=tenant_id, device_id=device_id):
        raise NotFound(f"device {device_id!r} not found")


async def tenant_ca(conn: Connection, *, tenant_id: str, passphrase: bytes) -> DeviceCa:
    """The tenant's device CA, made on first use (two concurrent first uses agree on one)."""
    row = await repo.device_ca(conn, tenant_id=tenant_id)
    if row is None:
        made = device_certs.new_device_ca(tenant_id)
        await repo.insert_device_ca(
            conn,
            tenant_id=tenant_id,
            certificate_pem=made.certificate_pem,
            key_pem=device_certs.encrypt_key(made.key, passphrase),
        )
        row = await repo.device_ca(conn, tenant_id=tenant_id)
        assert row is not None
    try:
        return device_certs.load_ca(row["certificate_pem"], row["key_pem"], passphrase)
    except (ValueError, TypeError) as exc:
        # The passphrase differs from the one the CA was stored with: a set-up fault.
        raise RuntimeError(
            "the tenant's device CA key cannot be decrypted: IOTCLOUD_DEVICE_CA_SECRET (or "
            "<home>/tls/device-ca.secret) is not the one it was made with"
        ) from exc


async def issue(
    conn: Connection, *, tenant_id: str, device_id: str, csr_pem: str, passphrase: bytes
) -> Issued:
    await _require_device(conn, tenant_id, device_id)
    try:
        csr = device_certs.load_csr(csr_pem, device_id=device_id)
    except CertificateRefused as exc:
        raise Unprocessable(str(exc)) from None
    ca = await tenant_ca(conn, tenant_id=tenant_id, passphrase=passphrase)
    certificate = device_certs.sign_device_certificate(ca, csr)
    facts = device_certs.facts(certificate)
    stored = await repo.insert(
        conn,
        certificate_id=facts.certificate_id,
        tenant_id=tenant_id,
        device_id=device_id,
        certificate_pem=facts.certificate_pem,
        origin="issued",
        subject=facts.subject,
        self_signed=False,
        not_after=facts.not_after,
    )
    if stored is None:  # a fresh serial number makes this all but impossible
        raise Conflict("this certificate is registered already")
    return Issued(
        facts.certificate_id, facts.certificate_pem, ca.certificate_pem, (ca.certificate_pem,)
    )


async def register(
    conn: Connection, *, tenant_id: str, device_id: str, certificate_pem: str
) -> Issued:
    """An existing certificate, known by its fingerprint (AWS's register-without-CA)."""
    await _require_device(conn, tenant_id, device_id)
    try:
        certificate = device_certs.load_certificate(certificate_pem)
        facts = device_certs.facts(certificate)
    except CertificateRefused as exc:
        raise Unprocessable(str(exc)) from None
    for ca_pem in await repo.device_ca_certificates(conn):
        if device_certs.issued_by(certificate, ca_pem):
            # Every certificate a device CA here issued is registered at issue, to its device.
            raise Conflict("this certificate was issued here for a device and is registered")
    stored = await repo.insert(
        conn,
        certificate_id=facts.certificate_id,
        tenant_id=tenant_id,
        device_id=device_id,
        certificate_pem=facts.certificate_pem,
        origin="registered",
        subject=facts.subject,
        self_signed=facts.self_signed,
        not_after=facts.not_after,
    )
    if stored is None:
        raise Conflict(f"certificate {facts.certificate_id} is registered already")
    trust = (facts.certificate_pem,) if facts.self_signed else ()
    return Issued(facts.certificate_id, facts.certificate_pem, None, trust)


async def list_certificates(
    conn: Connection, *, tenant_id: str, device_id: str
) -> list[dict[str, Any]]:
    await _require_device(conn, tenant_id, device_id)
    rows = await repo.list_for_device(conn, tenant_id=tenant_id, device_id=device_id)
    return [
        {
            "certificate_id": row["certificate_id"],
            "origin": row["origin"],
            "subject": row["subject"],
            "not_after": row["not_after"].isoformat(),
            "created_at": row["created_at"].isoformat(),
        }
        for row in rows
    ]


async def revoke(conn: Connection, *, tenant_id: str, device_id: str, certificate_id: str) -> None:
    """Gone at commit: the broker cuts the device's session and refuses the certificate."""
    if not CERTIFICATE_ID.match(certificate_id):
        raise NotFound(f"certificate {certificate_id!r} not found for device {device_id!r}")
    if not await repo.delete(
        conn, tenant_id=tenant_id, device_id=device_id, certificate_id=certificate_id.lower()
    ):
        raise NotFound(f"certificate {certificate_id!r} not found for device {device_id!r}")


async def trust_store_contents(conn: Connection) -> list[str]:
    """Everything the broker's client trust store must hold, from the database."""
    return [
        *await repo.device_ca_certificates(conn),
        *await repo.self_signed_registered(conn),
    ]
