"""The server certificate (``shared.tls``): the private CA made once, the server certificate it
signs accepted by a real TLS client for every name and address of this host, issued again only
when needed, and the operator's own pair checked with errors that name the setting."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from shared import tls
from shared.tls import HostIdentity, TlsError, TlsFiles, ensure_server_certificate


@pytest.fixture(autouse=True)
def no_operator_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IOTCLOUD_TLS_CERT", "IOTCLOUD_TLS_KEY", "IOTCLOUD_TLS_CA"):
        monkeypatch.delenv(name, raising=False)


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def fingerprint(path: Path) -> bytes:
    return certificate(path).fingerprint(hashes.SHA256())


def alt_names(path: Path) -> x509.SubjectAlternativeName:
    return certificate(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def handshake(files: TlsFiles, server_hostname: str, trust: Path | None) -> str:
    """A TLS handshake over a socket pair; returns what the client read from the server."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.cert, files.key)
    client_context = ssl.create_default_context(cafile=str(trust) if trust else None)
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(5)
    client_sock.settimeout(5)

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_sock, server_side=True) as conn:
                conn.sendall(b"hello")
        except (ssl.SSLError, OSError):
            pass  # the client refused us: the client side reports why

    server = threading.Thread(target=serve)
    server.start()
    try:
        with client_context.wrap_socket(client_sock, server_hostname=server_hostname) as conn:
            return conn.recv(5).decode()
    finally:
        client_sock.close()
        server.join(5)


@pytest.fixture
def made(tmp_path: Path) -> Iterator[TlsFiles]:
    yield ensure_server_certificate(tmp_path)


def test_the_private_ca_and_server_certificate_live_under_home_tls(
    tmp_path: Path, made: TlsFiles
) -> None:
    directory = tmp_path / "tls"
    ca = directory / "ca.pem"
    assert made == TlsFiles(directory / "server.pem", directory / "server.key", ca)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(made.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ca.stat().st_mode) == 0o644
    assert not list(directory.glob("*.tmp")) and not list(directory.glob(".*.tmp"))

    ca_cert = certificate(ca)
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca_cert.not_valid_after_utc - ca_cert.not_valid_before_utc >= timedelta(days=3650)
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert ca_key.public_key() == ca_cert.public_key()
    assert ca_cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    server = certificate(made.cert)
    server.verify_directly_issued_by(ca_cert)
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_the_server_certificate_names_this_host(made: TlsFiles) -> None:
    names = alt_names(made.cert)
    dns = set(names.get_values_for_type(x509.DNSName))
    addresses = set(names.get_values_for_type(x509.IPAddress))
    assert {"localhost", socket.gethostname().lower()} <= dns
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= addresses
    assert tls.host_identity().addresses <= addresses
    assert not any(address.is_link_local for address in addresses)


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1", socket.gethostname()])
def test_a_tls_client_that_trusts_ca_pem_accepts_the_server(
    made: TlsFiles, server_hostname: str
) -> None:
    assert handshake(made, server_hostname, trust=made.ca) == "hello"


def test_a_tls_client_that_does_not_trust_the_ca_refuses_the_server(made: TlsFiles) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(made, "localhost", trust=None)


def test_a_name_the_certificate_lacks_is_refused(made: TlsFiles) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(made, "not-this-host.example", trust=made.ca)


def test_later_calls_reuse_the_files(tmp_path: Path, made: TlsFiles) -> None:
    ca, server = fingerprint(tmp_path / "tls" / "ca.pem"), made.cert.read_bytes()
    again = ensure_server_certificate(tmp_path)
    assert again == made
    assert fingerprint(tmp_path / "tls" / "ca.pem") == ca
    assert made.cert.read_bytes() == server


def test_an_expiring_server_certificate_is_issued_again_by_the_same_ca(
    tmp_path: Path, made: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, server = fingerprint(tmp_path / "tls" / "ca.pem"), fingerprint(made.cert)
    # Every certificate now counts as within its renewal window.
    monkeypatch.setattr(tls, "RENEW_BEFORE", tls.SERVER_LIFETIME + timedelta(days=1))
    ensure_server_certificate(tmp_path)
    assert fingerprint(tmp_path / "tls" / "ca.pem") == ca
    assert fingerprint(made.cert) != server
    certificate(made.cert).verify_directly_issued_by(certificate(tmp_path / "tls" / "ca.pem"))


def test_a_new_address_of_the_host_gets_a_new_server_certificate(
    tmp_path: Path, made: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, server = fingerprint(tmp_path / "tls" / "ca.pem"), fingerprint(made.cert)
    now = tls.host_identity()
    moved = HostIdentity(
        names=now.names | {"renamed.example"},
        addresses=now.addresses | {ipaddress.ip_address("203.0.113.7")},
    )
    monkeypatch.setattr(tls, "host_identity", lambda: moved)
    ensure_server_certificate(tmp_path)
    assert fingerprint(tmp_path / "tls" / "ca.pem") == ca
    assert fingerprint(made.cert) != server
    names = alt_names(made.cert)
    assert "renamed.example" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("203.0.113.7") in names.get_values_for_type(x509.IPAddress)


def test_processes_starting_together_end_with_one_matching_pair(tmp_path: Path) -> None:
    # flock locks belong to open files, so threads that each open the lock take turns too.
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: ensure_server_certificate(tmp_path), range(8)))
    assert len(set(results)) == 1
    files = results[0]
    assert files.ca is not None
    ca_key = serialization.load_pem_private_key((tmp_path / "tls" / "ca.key").read_bytes(), None)
    assert ca_key.public_key() == certificate(files.ca).public_key()
    server_key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    assert server_key.public_key() == certificate(files.cert).public_key()
    certificate(files.cert).verify_directly_issued_by(certificate(files.ca))


def test_a_ca_certificate_without_its_key_is_an_error_not_a_new_ca(
    tmp_path: Path, made: TlsFiles
) -> None:
    (tmp_path / "tls" / "ca.key").unlink()
    with pytest.raises(TlsError, match=r"ca\.pem has no ca\.key"):
        ensure_server_certificate(tmp_path)


# --- the operator's own certificate ---------------------------------------------------------


@pytest.fixture
def operator_pair(tmp_path: Path) -> TlsFiles:
    """A certificate and key from elsewhere (another private CA, as a stand-in)."""
    return ensure_server_certificate(tmp_path / "elsewhere")


def test_the_operators_certificate_and_key_are_used_as_given(
    tmp_path: Path, operator_pair: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTCLOUD_TLS_CERT", str(operator_pair.cert))
    monkeypatch.setenv("IOTCLOUD_TLS_KEY", str(operator_pair.key))
    home = tmp_path / "home"
    assert ensure_server_certificate(home) == TlsFiles(operator_pair.cert, operator_pair.key, None)
    assert not (home / "tls").exists()

    monkeypatch.setenv("IOTCLOUD_TLS_CA", str(operator_pair.ca))
    files = ensure_server_certificate(home)
    assert files == operator_pair
    assert handshake(files, "localhost", trust=files.ca) == "hello"


def test_a_key_that_is_not_the_certificates_names_iotcloud_tls_key(
    tmp_path: Path, operator_pair: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = ensure_server_certificate(tmp_path / "other")
    monkeypatch.setenv("IOTCLOUD_TLS_CERT", str(operator_pair.cert))
    monkeypatch.setenv("IOTCLOUD_TLS_KEY", str(other.key))
    with pytest.raises(TlsError, match=r"IOTCLOUD_TLS_KEY .* is not the key of the certificate"):
        ensure_server_certificate(tmp_path / "home")


@pytest.mark.parametrize("missing", ["IOTCLOUD_TLS_CERT", "IOTCLOUD_TLS_KEY", "IOTCLOUD_TLS_CA"])
def test_an_unreadable_file_names_its_setting(
    tmp_path: Path, operator_pair: TlsFiles, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setenv("IOTCLOUD_TLS_CERT", str(operator_pair.cert))
    monkeypatch.setenv("IOTCLOUD_TLS_KEY", str(operator_pair.key))
    monkeypatch.setenv("IOTCLOUD_TLS_CA", str(operator_pair.ca))
    monkeypatch.setenv(missing, str(tmp_path / "absent.pem"))
    with pytest.raises(TlsError, match=rf"^{missing} \(.*absent\.pem\) cannot be read"):
        ensure_server_certificate(tmp_path / "home")


@pytest.mark.parametrize("setting", ["IOTCLOUD_TLS_CERT", "IOTCLOUD_TLS_KEY"])
def test_a_file_that_is_not_pem_names_its_setting(
    tmp_path: Path, operator_pair: TlsFiles, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    monkeypatch.setenv("IOTCLOUD_TLS_CERT", str(operator_pair.cert))
    monkeypatch.setenv("IOTCLOUD_TLS_KEY", str(operator_pair.key))
    monkeypatch.setenv(setting, str(garbage))
    with pytest.raises(TlsError, match=rf"^{setting} \(.*garbage\.pem\) holds no"):
        ensure_server_certificate(tmp_path / "home")


@pytest.mark.parametrize(
    ("given", "missing"),
    [("IOTCLOUD_TLS_CERT", "IOTCLOUD_TLS_KEY"), ("IOTCLOUD_TLS_KEY", "IOTCLOUD_TLS_CERT")],
)
def test_one_of_the_pair_alone_names_the_other(
    tmp_path: Path,
    operator_pair: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
    given: str,
    missing: str,
) -> None:
    monkeypatch.setenv(given, str(operator_pair.cert))
    with pytest.raises(TlsError, match=rf"^{missing} is not set"):
        ensure_server_certificate(tmp_path / "home")
    assert not (tmp_path / "home" / "tls").exists()
