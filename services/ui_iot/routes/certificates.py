"""Operator routes for device certificates (SPEC §9)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from shared import device_trust
from shared.db import transaction
from shared.errors import Unprocessable
from shared.services import audit, certificates
from shared.web import StorableJSONRoute
from ui_iot.deps import Admin, ClientIp, Pool, Viewer

log = logging.getLogger(__name__)

router = APIRouter(route_class=StorableJSONRoute, prefix="/customer/devices", tags=["certificates"])


class CertificateRequest(BaseModel):
    """Exactly one of: a CSR to sign (subject CN = the device id), or a certificate to
    register as it is, by its SHA-256 fingerprint."""

    model_config = ConfigDict(extra="forbid")

    csr: str | None = Field(default=None, max_length=16384)
    certificate_pem: str | None = Field(default=None, max_length=16384)


class CertificateIssued(BaseModel):
    certificate_id: str
    certificate_pem: str
    ca_pem: str | None


async def _trust(pems: tuple[str, ...]) -> None:
    """After the commit: the broker's trust store learns the new CA or certificate. A failed
    write is logged; ``iotcloud up`` rebuilds the store from the database at every start."""
    if not pems:
        return
    try:
        await asyncio.to_thread(device_trust.add, pems)
    except (OSError, ValueError, device_trust.TrustStoreError):
        log.exception("the broker's device trust store could not be updated")


@router.post("/{device_id}/certificates", status_code=201, response_model=CertificateIssued)
async def add_certificate(
    device_id: str, body: CertificateRequest, who: Admin, pool: Pool, ip: ClientIp
) -> dict[str, Any]:
    if (body.csr is None) == (body.certificate_pem is None):
        raise Unprocessable("give exactly one of 'csr' and 'certificate_pem'")
    passphrase = await asyncio.to_thread(device_trust.ca_passphrase) if body.csr else b""
    async with transaction(pool) as conn:
        if body.csr is not None:
            issued = await certificates.issue(
                conn,
                tenant_id=who.tenant_id,
                device_id=device_id,
                csr_pem=body.csr,
                passphrase=passphrase,
            )
        else:
            assert body.certificate_pem is not None
            issued = await certificates.register(
                conn,
                tenant_id=who.tenant_id,
                device_id=device_id,
                certificate_pem=body.certificate_pem,
            )
        await audit.record(
            conn,
            who,
            "certificate.issue" if body.csr is not None else "certificate.register",
            device_id,
            {"certificate_id": issued.certificate_id},
            ip,
        )
    await _trust(issued.trust)
    return issued.as_json()


@router.get("/{device_id}/certificates")
async def list_certificates(device_id: str, who: Viewer, pool: Pool) -> dict[str, Any]:
    async with pool.acquire() as conn:
        items = await certificates.list_certificates(
            conn, tenant_id=who.tenant_id, device_id=device_id
        )
    return {"items": items}


@router.delete("/{device_id}/certificates/{certificate_id}", status_code=204)
async def revoke_certificate(
    device_id: str, certificate_id: str, who: Admin, pool: Pool, ip: ClientIp
) -> Response:
    """The broker cuts the session that used it when the deletion commits (it LISTENs)."""
    async with transaction(pool) as conn:
        await certificates.revoke(
            conn, tenant_id=who.tenant_id, device_id=device_id, certificate_id=certificate_id
        )
        await audit.record(
            conn, who, "certificate.revoke", device_id, {"certificate_id": certificate_id}, ip
        )
    return Response(status_code=204)
