"""The pure certificate rules (shared.device_certs) and the broker trust directory's file
names (shared.device_trust), without a database or a broker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from shared import device_certs, device_trust
from shared.device_certs import CertificateRefused


def test_a_csr_is_signed_as_a_client_certificate_for_its_device() -> None:
    ca = device_certs.new_device_ca("acme")
    _, csr_pem = device_certs.new_device_key_and_csr("boiler-1")
    csr = device_certs.load_csr(csr_pem, device_id="boiler-1")
    cert = device_certs.sign_device_certificate(ca, csr)
    cert.verify_directly_issued_by(ca.certificate)
    assert device_certs.issued_by(cert, ca.certificate_pem)
    assert not device_certs.issued_by(cert, device_certs.new_device_ca("acme").certificate_pem)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    facts = device_certs.facts(cert)
    assert facts.certificate_id == cert.fingerprint(hashes.SHA256()).hex()
    assert facts.subject == "CN=boiler-1"
    assert not facts.self_signed
    assert device_certs.facts(ca.certificate).self_signed


def test_the_ca_key_is_stored_encrypted_and_needs_its_passphrase() -> None:
    ca = device_certs.new_device_ca("acme")
    stored = device_certs.encrypt_key(ca.key, b"right")
    assert "ENCRYPTED PRIVATE KEY" in stored
    loaded = device_certs.load_ca(ca.certificate_pem, stored, b"right")
    assert loaded.certificate == ca.certificate
    with pytest.raises(ValueError):
        device_certs.load_ca(ca.certificate_pem, stored, b"wrong")


@pytest.mark.parametrize(
    ("pem", "words"),
    [
        ("", "not a PEM"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "not a PEM",
        ),
        ("x" * 20000, "over"),
    ],
)
def test_bad_csrs_are_refused_with_a_reason(pem: str, words: str) -> None:
    with pytest.raises(CertificateRefused, match=words):
        device_certs.load_csr(pem, device_id="boiler-1")


def test_a_csr_for_another_device_is_refused() -> None:
    _, csr_pem = device_certs.new_device_key_and_csr("boiler-2")
    with pytest.raises(CertificateRefused, match="CN must be the device id"):
        device_certs.load_csr(csr_pem, device_id="boiler-1")


def test_the_trust_directory_uses_openssl_hash_names_once(tmp_path: Path) -> None:
    ca = device_certs.new_device_ca("acme")
    other = device_certs.new_device_ca("globex")
    device_trust.add([ca.certificate_pem, other.certificate_pem], tmp_path)
    device_trust.add([ca.certificate_pem], tmp_path)  # again: no second file
    files = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert len(files) == 2
    expected = (
        subprocess.run(
            ["openssl", "x509", "-noout", "-subject_hash"],
            input=ca.certificate_pem.encode(),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    assert f"{expected}.0" in files
    # OpenSSL itself finds the CA through the directory.
    _, csr_pem = device_certs.new_device_key_and_csr("boiler-1")
    leaf = device_certs.sign_device_certificate(
        ca, device_certs.load_csr(csr_pem, device_id="boiler-1")
    )
    (tmp_path / "leaf.pem").write_text(device_certs.facts(leaf).certificate_pem)
    verified = subprocess.run(
        ["openssl", "verify", "-CApath", str(tmp_path), str(tmp_path / "leaf.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
