"""X.509 device certificates (SPEC §9): the operator API, its bad input, and the broker's
mutual-TLS listener — identity from the certificate, checked against the database at
CONNECT, the user name ignored, a removed certificate cut at once and refused after."""

from __future__ import annotations

import ssl
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from iotcloud import cli
from shared.device_certs import new_device_key_and_csr
from shared.errors import DomainError
from shared.topics import reply_topic, reported_topic
from tests.integration.cert_stack import CertStack, DeviceFiles, cert_stack, issue_files
from tests.integration.test_broker_auth import next_message, session_dropped
from tests.support import eventually

__all__ = ["cert_stack"]

AWS_STYLE_USERNAME = "?SDK=Python&Version=1.6.2"


def cert_client(
    env: CertStack, files: DeviceFiles, *, client_id: str | None = None, **options: Any
) -> aiomqtt.Client:
    """What an AWS SDK does: TLS with a client certificate, an SDK user name, no password."""
    return aiomqtt.Client(
        "localhost",
        env.cert_port,
        username=AWS_STYLE_USERNAME,
        identifier=files.device_id if client_id is None else client_id,
        tls_context=files.ssl_context(),
        timeout=5,
        **options,
    )


async def refused(client: aiomqtt.Client) -> bool:
    try:
        async with client:
            return False
    except aiomqtt.MqttError:
        return True


def self_signed(device_id: str, *, days: int = 365, ca: bool = False) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=400))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def tampered_csr(device_id: str) -> str:
    """A CSR whose signature no longer matches its content (one signature byte flipped)."""
    _, pem = new_device_key_and_csr(device_id)
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01
    csr = x509.load_der_x509_csr(bytes(der))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def weak_rsa_csr(device_id: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def post(env: CertStack, headers: dict[str, str], device_id: str, body: Any) -> Any:
    return await env.stack.ui.post(
        f"/customer/devices/{device_id}/certificates", json=body, headers=headers
    )


async def test_a_csr_is_signed_by_the_tenant_ca_listed_and_revoked(
    cert_stack: CertStack,
) -> None:
    env = cert_stack
    tenant_id, headers = await env.stack.tenant("admin")
    device_id = (await env.stack.device(headers))["device_id"]
    _, csr = new_device_key_and_csr(device_id)
    response = await post(env, headers, device_id, {"csr": csr})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"certificate_id", "certificate_pem", "ca_pem"}
    cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    ca = x509.load_pem_x509_certificate(body["ca_pem"].encode())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device_id
    assert body["certificate_id"] == cert.fingerprint(hashes.SHA256()).hex()
    assert tenant_id in ca.subject.rfc4514_string()

    # A second device of the tenant: the same CA; another tenant: its own CA.
    other_device = (await env.stack.device(headers))["device_id"]
    again = await post(env, headers, other_device, {"csr": new_device_key_and_csr(other_device)[1]})
    assert again.json()["ca_pem"] == body["ca_pem"]
    _, other_headers = await env.stack.tenant("admin")
    stranger = (await env.stack.device(other_headers))["device_id"]
    theirs = await post(env, other_headers, stranger, {"csr": new_device_key_and_csr(stranger)[1]})
    assert theirs.status_code == 201
    assert theirs.json()["ca_pem"] != body["ca_pem"]

    listed = await env.stack.ui.get(f"/customer/devices/{device_id}/certificates", headers=headers)
    assert listed.status_code == 200
    assert [item["certificate_id"] for item in listed.json()["items"]] == [body["certificate_id"]]
    assert listed.json()["items"][0]["origin"] == "issued"

    # Another tenant can neither see nor revoke it.
    path = f"/customer/devices/{device_id}/certificates"
    assert (await env.stack.ui.get(path, headers=other_headers)).status_code == 404
    gone = await env.stack.ui.delete(f"{path}/{body['certificate_id']}", headers=other_headers)
    assert gone.status_code == 404

    deleted = await env.stack.ui.delete(f"{path}/{body['certificate_id']}", headers=headers)
    assert deleted.status_code == 204
    assert (await env.stack.ui.get(path, headers=headers)).json()["items"] == []
    again_deleted = await env.stack.ui.delete(f"{path}/{body['certificate_id']}", headers=headers)
    assert again_deleted.status_code == 404


async def test_bad_certificate_input_gets_a_clear_4xx_and_writes_nothing(
    cert_stack: CertStack,
) -> None:
    env = cert_stack
    _, headers = await env.stack.tenant("admin")
    device_id = (await env.stack.device(headers))["device_id"]
    _, other_headers = await env.stack.tenant("admin")
    stranger = (await env.stack.device(other_headers))["device_id"]
    theirs = await post(env, other_headers, stranger, {"csr": new_device_key_and_csr(stranger)[1]})
    assert theirs.status_code == 201
    _, registered = self_signed(device_id)
    assert (await post(env, headers, device_id, {"certificate_pem": registered})).status_code == 201

    garbage_pem = (
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n"
    )
    cases: list[tuple[str, Any, int, str]] = [
        ("not PEM", {"csr": "hello"}, 422, "not a PEM"),
        ("PEM of garbage", {"csr": garbage_pem}, 422, "not a PEM certificate request"),
        ("bad signature", {"csr": tampered_csr(device_id)}, 422, "signature"),
        ("wrong CN", {"csr": new_device_key_and_csr("someone-else")[1]}, 422, "CN"),
        ("weak key", {"csr": weak_rsa_csr(device_id)}, 422, "2048"),
        (
            "both",
            {"csr": new_device_key_and_csr(device_id)[1], "certificate_pem": registered},
            422,
            "exactly one",
        ),
        ("neither", {}, 422, "exactly one"),
        ("unknown key", {"csr": "x", "extra": 1}, 422, ""),
        ("not a certificate", {"certificate_pem": "hello"}, 422, "not a PEM"),
        ("expired", {"certificate_pem": self_signed(device_id, days=-1)[1]}, 422, "expired"),
        ("a CA", {"certificate_pem": self_signed(device_id, ca=True)[1]}, 422, "CA"),
        ("duplicate fingerprint", {"certificate_pem": registered}, 409, "registered already"),
        (
            "another tenant's device's",
            {"certificate_pem": theirs.json()["certificate_pem"]},
            409,
            "issued here",
        ),
        ("huge", {"csr": "x" * 20000}, 422, ""),
    ]
    for label, body, status, words in cases:
        response = await post(env, headers, device_id, body)
        assert response.status_code == status, (label, response.text)
        assert words in response.text, (label, response.text)

    # A device of another tenant, or none: 404, whatever the body.
    for target in (stranger, "no-such-device"):
        response = await post(env, headers, target, {"csr": new_device_key_and_csr(target)[1]})
        assert response.status_code == 404, response.text
    # A viewer cannot issue.
    _, viewer = await env.stack.tenant("viewer", tenant_id=None)
    response = await post(env, viewer, device_id, {"csr": new_device_key_and_csr(device_id)[1]})
    assert response.status_code in (403, 404)

    listed = await env.stack.ui.get(f"/customer/devices/{device_id}/certificates", headers=headers)
    assert [item["origin"] for item in listed.json()["items"]] == ["registered"]


async def test_a_device_logs_in_with_its_certificate_whatever_its_user_name(
    cert_stack: CertStack, tmp_path: Path
) -> None:
    env = cert_stack
    tenant_id, headers = await env.stack.tenant("admin")
    device_id = (await env.stack.device(headers))["device_id"]
    other_id = (await env.stack.device(headers))["device_id"]
    files = await issue_files(env, headers, device_id, tmp_path / "dev")

    async with cert_client(env, files) as device:
        own = await device.subscribe(f"tenant/{tenant_id}/device/{device_id}/shadow/#", qos=1)
        assert list(own) == [1]
        assert list(await device.subscribe(f"$aws/things/{device_id}/shadow/#", qos=1)) == [1]
        # Another thing's topics are refused, AWS's tree and ours.
        assert list(await device.subscribe(f"$aws/things/{other_id}/shadow/#", qos=1)) == [128]
        assert list(
            await device.subscribe(f"tenant/{tenant_id}/device/{other_id}/shadow/#", qos=1)
        ) == [128]
        await device.publish(
            reported_topic(tenant_id, device_id),
            orjson.dumps({"reported": {"via": "x509"}, "version": 0, "clientToken": "c1"}),
            qos=1,
        )
        while True:
            message = await next_message(device, timeout=10)
            if message.topic.value == reply_topic(tenant_id, device_id, accepted=True):
                break
    twin = await env.stack.ui.get(f"/customer/devices/{device_id}/twin", headers=headers)
    assert twin.json()["reported"] == {"via": "x509"}

    # The client id must still be the device id; a certificate is no key to another device.
    assert await refused(cert_client(env, files, client_id=other_id))
    assert await refused(cert_client(env, files, client_id=f"{device_id}-2"))
    # Without a certificate the listener refuses the handshake, token or not.
    token = (await env.stack.device(headers))["provision_token"]
    no_cert = ssl.create_default_context(cafile=str(files.ca))
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "localhost",
            env.cert_port,
            username=device_id,
            password=token,
            identifier=device_id,
            tls_context=no_cert,
            timeout=5,
        ):
            pass
    # A certificate of a CA the broker does not trust fails the handshake too.
    key_pem, cert_pem = self_signed(device_id)
    (tmp_path / "rogue.key").write_text(key_pem)
    (tmp_path / "rogue.pem").write_text(cert_pem)
    rogue = DeviceFiles(device_id, "", tmp_path / "rogue.key", tmp_path / "rogue.pem", files.ca)
    assert await refused(cert_client(env, rogue))


async def test_a_removed_certificate_is_cut_at_once_and_refused_after(
    cert_stack: CertStack, tmp_path: Path
) -> None:
    env = cert_stack
    _tenant_id, headers = await env.stack.tenant("admin")
    device_id = (await env.stack.device(headers))["device_id"]
    files = await issue_files(env, headers, device_id, tmp_path / "dev")
    kept = await issue_files(env, headers, device_id, tmp_path / "kept")
    async with cert_client(env, files) as live:
        await live.subscribe(f"$aws/things/{device_id}/shadow/#", qos=1)
        deleted = await env.stack.ui.delete(
            f"/customer/devices/{device_id}/certificates/{files.certificate_id}", headers=headers
        )
        assert deleted.status_code == 204
        assert await session_dropped(live, timeout=3), "the revoked certificate stayed connected"
    assert await refused(cert_client(env, files))
    # The device's other certificate still works; deleting the device ends that one too.
    async with cert_client(env, kept) as other:
        gone = await env.stack.ui.delete(f"/customer/devices/{device_id}", headers=headers)
        assert gone.status_code == 204
        assert await session_dropped(other, timeout=3)
    assert await refused(cert_client(env, kept))


async def test_a_registered_self_signed_certificate_logs_in(
    cert_stack: CertStack, tmp_path: Path
) -> None:
    env = cert_stack
    _tenant_id, headers = await env.stack.tenant("admin")
    device_id = (await env.stack.device(headers))["device_id"]
    key_pem, cert_pem = self_signed(f"legacy-{uuid.uuid4().hex[:6]}")
    (tmp_path / "device.key").write_text(key_pem)
    (tmp_path / "device.pem").write_text(cert_pem)
    assert env.server.ca is not None
    files = DeviceFiles(
        device_id, "", tmp_path / "device.key", tmp_path / "device.pem", env.server.ca
    )
    assert await refused(cert_client(env, files)), "not registered yet"
    response = await post(env, headers, device_id, {"certificate_pem": cert_pem})
    assert response.status_code == 201, response.text
    assert response.json()["ca_pem"] is None

    async def admitted() -> bool:
        return not await refused(cert_client(env, files))

    await eventually(admitted, timeout=5, interval=0.2)


async def test_the_cli_writes_files_a_device_connects_with(
    cert_stack: CertStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = cert_stack
    tenant_id, headers = await env.stack.tenant("admin")
    device_id = (await env.stack.device(headers))["device_id"]
    monkeypatch.setenv("DATABASE_URL", env.stack.settings.database_url)
    monkeypatch.setenv("IOTCLOUD_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    argv = ["device", "cert", "--tenant", tenant_id, "--device", device_id, "--out", str(out)]
    args = cli.build_parser().parse_args(argv)
    await args.handler(args)
    assert (out / "device.key").stat().st_mode & 0o077 == 0
    # ca.pem is the broker's server CA, which the test broker's certificate comes from.
    assert (out / "ca.pem").read_text() == env.server.ca.read_text()  # type: ignore[union-attr]
    cert = x509.load_pem_x509_certificate((out / "device.pem").read_bytes())
    files = DeviceFiles(
        device_id,
        cert.fingerprint(hashes.SHA256()).hex(),
        out / "device.key",
        out / "device.pem",
        out / "ca.pem",
    )
    async with cert_client(env, files) as device:
        assert list(await device.subscribe(f"$aws/things/{device_id}/shadow/#", qos=1)) == [1]
    # Files already there are not overwritten without --force; a tenant that is not there
    # or another tenant's device is a clear error (main prints it and exits 2).
    assert "already holds" in await cli_error(argv)
    assert "no tenant" in await cli_error(
        ["device", "cert", "--tenant", "nope", "--device", device_id, "--out", str(tmp_path / "o")]
    )
    _, other_headers = await env.stack.tenant("admin")
    stranger = (await env.stack.device(other_headers))["device_id"]
    assert "not found" in await cli_error(
        [
            "device",
            "cert",
            "--tenant",
            tenant_id,
            "--device",
            stranger,
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert not (tmp_path / "o").exists()


async def cli_error(argv: list[str]) -> str:
    args = cli.build_parser().parse_args(argv)
    try:
        await args.handler(args)
    except ValueError as exc:
        return str(exc)
    except DomainError as exc:
        return str(exc.detail)
    raise AssertionError(f"{argv} succeeded")


async def test_odd_certificate_ids_and_subjects_are_a_clear_4xx(cert_stack: CertStack) -> None:
    env = cert_stack
    _, headers = await env.stack.tenant("admin")
    device_id = (await env.stack.device(headers))["device_id"]
    path = f"/customer/devices/{device_id}/certificates"
    for odd in ("nope", "a" * 65, "%00" + "a" * 63, "g" * 64):
        response = await env.stack.ui.delete(f"{path}/{odd}", headers=headers)
        assert response.status_code == 404, (odd, response.text)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nul\x00inside")])
    now = datetime.now(UTC)
    nul_subject = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    # Kept, with the subject escaped as RFC 4514 text (PostgreSQL text holds no NUL).
    response = await post(env, headers, device_id, {"certificate_pem": nul_subject})
    assert response.status_code == 201, response.text
    listed = (await env.stack.ui.get(path, headers=headers)).json()["items"]
    assert listed[0]["subject"] == "O=nul\\00inside", listed
