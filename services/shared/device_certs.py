"""X.509 for device certificates (SPEC §9): tenant device CAs, CSR signing, fingerprints.

Pure: no database, no web framework. ``shared.services.certificates`` holds the rules that
need the registry; this module only reads, checks and makes certificates. A check that
fails raises :class:`CertificateRefused` with a message fit for the API's 422.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.tls import self_signed_ca

CA_LIFETIME = timedelta(days=7300)
DEVICE_LIFETIME = timedelta(days=3650)
BACKDATE = timedelta(minutes=5)
MIN_RSA_BITS = 2048
MAX_PEM_CHARS = 16384


class CertificateRefused(ValueError):
    """The PEM, CSR or certificate cannot be accepted (the message says why)."""


@dataclass(frozen=True, slots=True)
class DeviceCa:
    certificate: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What the registry keeps of a device certificate."""

    certificate_id: str
    certificate_pem: str
    subject: str
    not_after: datetime
    self_signed: bool


def fingerprint(certificate: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the DER: AWS's certificate id, and what the broker looks up."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def facts(certificate: x509.Certificate) -> CertificateFacts:
    return CertificateFacts(
        certificate_id=fingerprint(certificate),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        subject=certificate.subject.rfc4514_string(),  # escapes NUL and the like
        not_after=certificate.not_valid_after_utc,
        self_signed=is_self_signed(certificate),
    )


def is_self_signed(certificate: x509.Certificate) -> bool:
    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def common_name(name: x509.Name) -> str | None:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else None


def _check_text(pem: str, kind: str) -> bytes:
    if len(pem) > MAX_PEM_CHARS:
        raise CertificateRefused(f"the {kind} is over {MAX_PEM_CHARS} characters")
    if f"-----BEGIN {kind.upper()}" not in pem and not (
        kind == "certificate request" and "-----BEGIN NEW CERTIFICATE REQUEST" in pem
    ):
        raise CertificateRefused(f"not a PEM {kind} (no '-----BEGIN {kind.upper()}' block)")
    return pem.encode()


def _check_key(key: object, what: str) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CertificateRefused(f"the {what} key is RSA-{key.key_size}; at least 2048 bits")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in {"secp256r1", "secp384r1", "secp521r1"}:
            raise CertificateRefused(f"the {what} key's curve {key.curve.name} is not supported")
        return
    raise CertificateRefused(f"the {what} key must be RSA (2048+) or ECDSA P-256/P-384/P-521")


def load_csr(pem: str, *, device_id: str) -> x509.CertificateSigningRequest:
    """A CSR whose signature holds and whose subject CN is ``device_id``."""
    data = _check_text(pem, "certificate request")
    try:
        csr = x509.load_pem_x509_csr(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateRefused(f"not a PEM certificate request: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except UnsupportedAlgorithm:
        valid = False
    if not valid:
        raise CertificateRefused("the certificate request's signature does not verify")
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateRefused("the certificate request's key cannot be read") from None
    _check_key(key, "certificate request's")
    cn = common_name(csr.subject)
    if cn != device_id:
        raise CertificateRefused(
            f"the certificate request's subject CN must be the device id {device_id!r}"
            f" (it is {cn!r})"
        )
    return csr


def load_certificate(pem: str) -> x509.Certificate:
    """One certificate to register as it is (AWS's register-without-CA)."""
    data = _check_text(pem, "certificate")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateRefused(f"not a PEM certificate: {exc}") from None
    if len(certificates) != 1:
        raise CertificateRefused("give exactly one certificate, the device's own")
    certificate = certificates[0]
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateRefused("the certificate's key cannot be read") from None
    _check_key(key, "certificate's")
    now = datetime.now(UTC)
    if certificate.not_valid_after_utc <= now:
        raise CertificateRefused("the certificate has expired")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        constraints = None
    except ValueError as exc:
        raise CertificateRefused(f"the certificate's extensions cannot be read: {exc}") from None
    if constraints is not None and constraints.value.ca:
        raise CertificateRefused("a CA certificate cannot be a device's certificate")
    return certificate


def issued_by(certificate: x509.Certificate, ca_pem: str) -> bool:
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    if certificate.issuer != ca.subject:
        return False
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def new_device_ca(tenant_id: str) -> DeviceCa:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iotcloud"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"iotcloud device CA {tenant_id}"),
            # Two tenants' CAs never share a subject, even after a tenant is made again.
            x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8)),
        ]
    )
    certificate, _ = self_signed_ca(name, key, lifetime=CA_LIFETIME)
    return DeviceCa(certificate, key)


def sign_device_certificate(ca: DeviceCa, csr: x509.CertificateSigningRequest) -> x509.Certificate:
    """A TLS client certificate for the CSR's key, subject CN = the device id."""
    public_key = csr.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CertificateRefused("the certificate request's key must be RSA or ECDSA")
    cn = common_name(csr.subject)
    assert cn is not None  # load_csr checked it
    now = datetime.now(UTC)
    not_after = min(now + DEVICE_LIFETIME, ca.certificate.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def encrypt_key(key: CertificateIssuerPrivateKeyTypes, passphrase: bytes) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    ).decode()


def load_ca(certificate_pem: str, key_pem: str, passphrase: bytes) -> DeviceCa:
    key = serialization.load_pem_private_key(key_pem.encode(), password=passphrase)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ValueError("a device CA key must be ECDSA, RSA or Ed25519")
    return DeviceCa(x509.load_pem_x509_certificate(certificate_pem.encode()), key)


def new_device_key_and_csr(device_id: str) -> tuple[str, str]:
    """A device's private key (PEM, unencrypted, for ``device.key``) and its CSR."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()
