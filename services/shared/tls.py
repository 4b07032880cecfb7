"""The server certificate of the broker's TLS listener and of the device HTTP API.

Either the operator's own (``IOTCLOUD_TLS_CERT``/``IOTCLOUD_TLS_KEY``, checked here so a bad
pair fails at start-up with the variable's name, not at the first handshake), or one issued
by a private CA kept under ``<home>/tls/``: created once, and the server certificate issued
again only when it nears its end or no longer names every name and address of this host.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.settings import SettingsError

CA_LIFETIME = timedelta(days=3650)
# What browsers and Apple accept for a server certificate; re-issued well before its end.
SERVER_LIFETIME = timedelta(days=397)
RENEW_BEFORE = timedelta(days=30)
# Tolerates a client whose clock runs a little behind the one that issued the certificate.
BACKDATE = timedelta(minutes=5)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TlsError(SettingsError):
    """The configured certificate or key cannot be used (the message names the setting)."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for a TLS server: ``ca`` is what clients trust (None: a public CA's chain)."""

    cert: Path
    key: Path
    ca: Path | None


@dataclass(frozen=True, slots=True)
class HostIdentity:
    """The names and addresses a client may use to reach this host."""

    names: frozenset[str]
    addresses: frozenset[IpAddress]


def ensure_server_certificate(home: Path) -> TlsFiles:
    """The operator's certificate and key, checked, or else the private CA's, made as needed."""
    cert_path = _env_path("IOTCLOUD_TLS_CERT")
    key_path = _env_path("IOTCLOUD_TLS_KEY")
    if cert_path is None and key_path is None:
        return _private_ca_files(home / "tls", host_identity())
    if cert_path is None or key_path is None:
        missing = "IOTCLOUD_TLS_CERT" if cert_path is None else "IOTCLOUD_TLS_KEY"
        raise TlsError(f"{missing} is not set: set both IOTCLOUD_TLS_CERT and IOTCLOUD_TLS_KEY")
    return _operator_files(cert_path, key_path, _env_path("IOTCLOUD_TLS_CA"))


def host_identity() -> HostIdentity:
    """``localhost``, this host's name and FQDN, loopback and its other addresses.

    Read from the resolver and the kernel (``ip -o addr``), never by sending a packet to a
    peer. Other loopback and link-local addresses are left out: no client dials them.
    """
    hostname = socket.gethostname()
    names = {"localhost", hostname.lower()}
    addresses: set[IpAddress] = {
        ipaddress.IPv4Address("127.0.0.1"),
        ipaddress.IPv6Address("::1"),
    }
    found: set[IpAddress] = set()
    with contextlib.suppress(OSError):
        for _family, _kind, _proto, canonical, sockaddr in socket.getaddrinfo(
            hostname, None, type=socket.SOCK_STREAM, flags=socket.AI_CANONNAME
        ):
            if canonical:
                names.add(canonical.lower())
            with contextlib.suppress(ValueError):
                found.add(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]))
    fqdn = socket.getfqdn(hostname)
    if fqdn:
        names.add(fqdn.lower())
    found.update(_interface_addresses())
    addresses.update(a for a in found if not (a.is_loopback or a.is_link_local or a.is_unspecified))
    return HostIdentity(
        names=frozenset(name.rstrip(".") for name in names if _is_dns_name(name)),
        addresses=frozenset(addresses),
    )


def _interface_addresses() -> Iterator[IpAddress]:
    ip = shutil.which("ip")
    if ip is None:
        return
    try:
        listing = subprocess.run(
            [ip, "-o", "addr", "show"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return
    for line in listing.splitlines():
        words = line.split()
        for family, value in itertools.pairwise(words):
            if family in ("inet", "inet6"):
                with contextlib.suppress(ValueError):
                    yield ipaddress.ip_interface(value).ip


def _is_dns_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return bool(name) and all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
        for label in labels
    )


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value) if value else None


# --- the operator's own certificate ---------------------------------------------------------


def _operator_files(cert_path: Path, key_path: Path, ca_path: Path | None) -> TlsFiles:
    chain = _read_certificates("IOTCLOUD_TLS_CERT", cert_path)
    key = _read_key("IOTCLOUD_TLS_KEY", key_path)
    leaf = chain[0]
    if _public_der(leaf.public_key()) != _public_der(key.public_key()):
        raise TlsError(
            f"IOTCLOUD_TLS_KEY ({key_path}) is not the key of the certificate in "
            f"IOTCLOUD_TLS_CERT ({cert_path})"
        )
    if leaf.not_valid_after_utc <= datetime.now(UTC):
        raise TlsError(
            f"IOTCLOUD_TLS_CERT ({cert_path}) expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    if ca_path is not None:
        _read_certificates("IOTCLOUD_TLS_CA", ca_path)
    return TlsFiles(cert=cert_path, key=key_path, ca=ca_path)


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{setting} ({path}) cannot be read: {exc.strerror or exc}") from exc


def _read_certificates(setting: str, path: Path) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(_read(setting, path))
    except ValueError as exc:
        raise TlsError(f"{setting} ({path}) holds no PEM certificate") from exc
    return chain


def _read_key(setting: str, path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(_read(setting, path), password=None)
    except TypeError as exc:
        raise TlsError(
            f"{setting} ({path}) is encrypted; give the key without a passphrase"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsError(f"{setting} ({path}) holds no usable PEM private key") from exc


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- the private CA -------------------------------------------------------------------------


def _private_ca_files(directory: Path, identity: HostIdentity) -> TlsFiles:
    ca_path, ca_key_path = directory / "ca.pem", directory / "ca.key"
    files = TlsFiles(cert=directory / "server.pem", key=directory / "server.key", ca=ca_path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    # Processes that start together take turns: each file is replaced atomically, but a CA's
    # key and certificate (and the server's) are only a pair if one process writes both.
    with _locked(directory / ".lock"):
        ca = _load_ca(ca_path, ca_key_path)
        if ca is None:
            ca = _new_ca(identity)
            _write_atomic(ca_key_path, _private_pem(ca[1]), 0o600)
            _write_atomic(ca_path, ca[0].public_bytes(serialization.Encoding.PEM), 0o644)
        if not _server_current(files.cert, files.key, ca[0], identity):
            cert, key = _new_server_certificate(ca, identity)
            _write_atomic(files.key, _private_pem(key), 0o600)
            _write_atomic(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a+b") as lock:
        os.chmod(path, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The existing CA, or None when there is none yet; never silently a different one."""
    if not cert_path.exists():
        # ca.pem is written last: a key without it was never handed to a device.
        return None
    cert = _read_certificates("the private CA", cert_path)[0]
    if not key_path.exists():
        raise TlsError(
            f"{cert_path} has no {key_path.name} beside it; restore the key, or remove "
            f"{cert_path} to create a new CA (devices must then trust the new ca.pem)"
        )
    key = _read_key("the private CA's key", key_path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{key_path} is not an EC key, as the private CA's key always is")
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise TlsError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def _server_current(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate, identity: HostIdentity
) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return (
        _public_der(cert.public_key()) == _public_der(key.public_key())
        and cert.not_valid_after_utc - RENEW_BEFORE > datetime.now(UTC)
        and identity.names <= set(names.get_values_for_type(x509.DNSName))
        and identity.addresses <= set(names.get_values_for_type(x509.IPAddress))
    )


def self_signed_ca(
    name: x509.Name, key: ec.EllipticCurvePrivateKey, *, lifetime: timedelta
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA certificate for ``key`` under ``name`` that signs only end certificates
    (``pathlen 0``): the broker's private CA and every tenant's device CA."""
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_ca(
    identity: HostIdentity,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    host = min(identity.names - {"localhost"}, default="localhost")
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iotcloud"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"iotcloud private CA ({host})"[:64]),
        ]
    )
    return self_signed_ca(name, key, lifetime=CA_LIFETIME)


def _new_server_certificate(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], identity: HostIdentity
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    host = min(identity.names - {"localhost"}, default="localhost")
    now = datetime.now(UTC)
    alt_names: list[x509.GeneralName] = [
        *(x509.DNSName(name) for name in sorted(identity.names)),
        *(x509.IPAddress(address) for address in sorted(identity.addresses, key=str)),
    ]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + SERVER_LIFETIME, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _private_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write beside ``path`` and rename over it: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
