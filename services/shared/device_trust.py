"""Where the device-certificate secrets and the broker's client trust store live on disk.

* The passphrase that encrypts every tenant's device CA key in the database:
  ``IOTCLOUD_DEVICE_CA_SECRET``, or else ``<home>/tls/device-ca.secret`` (mode 0600, made
  once). Services that issue certificates need it; the database never holds it.
* The broker's client trust store, an OpenSSL hashed directory (``capath``):
  ``IOTCLOUD_DEVICE_TRUST_DIR``, or else ``<home>/tls/device-trust/``. It holds every
  tenant's device CA and every registered self-signed certificate. OpenSSL reads such a
  directory at each handshake, so a CA added while the broker runs is trusted at once,
  without a restart. It is a gate, not the identity: the broker still looks every
  certificate's fingerprint up in the database, so a stale file admits nobody.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.settings import project_home


class TrustStoreError(RuntimeError):
    pass


def ca_passphrase() -> bytes:
    configured = os.environ.get("IOTCLOUD_DEVICE_CA_SECRET", "")
    if configured:
        return configured.encode()
    path = project_home() / "tls" / "device-ca.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(secrets.token_urlsafe(32))
        tmp.chmod(0o600)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # the first writer wins; everyone reads what it wrote
        tmp.unlink()
    return path.read_text().strip().encode()


def trust_dir() -> Path:
    configured = os.environ.get("IOTCLOUD_DEVICE_TRUST_DIR", "")
    return Path(configured) if configured else project_home() / "tls" / "device-trust"


def _subject_hash(pem: bytes) -> str:
    """OpenSSL's ``X509_NAME_hash`` of the subject: the file name its hashed lookup wants."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TrustStoreError("the openssl command is needed to name trust-store files")
    result = subprocess.run(
        [openssl, "x509", "-noout", "-subject_hash"],
        input=pem,
        capture_output=True,
        timeout=10,
        check=False,
    )
    if result.returncode != 0:
        raise TrustStoreError(f"openssl could not read a certificate: {result.stderr!r}")
    return result.stdout.decode().strip()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def add(certificates_pem: Iterable[str], directory: Path | None = None) -> None:
    """Put each certificate into the trust directory (once; ``<hash>.<n>`` as c_rehash does)."""
    directory = directory or trust_dir()
    with _locked(directory):
        for pem in certificates_pem:
            der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(
                serialization.Encoding.DER
            )
            canonical = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
            name = _subject_hash(canonical)
            index = 0
            while (directory / f"{name}.{index}").exists():
                if (directory / f"{name}.{index}").read_bytes() == canonical:
                    break
                index += 1
            else:
                target = directory / f"{name}.{index}"
                tmp = directory / f".{name}.{index}.tmp"
                tmp.write_bytes(canonical)
                tmp.chmod(0o644)
                tmp.replace(target)
