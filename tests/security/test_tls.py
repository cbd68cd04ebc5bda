"""Optional TLS for a bus that spans machines: the embedded server serves the configured certificate, clients
that trust its CA connect (with their NKey, as always), and a client that does not trust it gets nothing."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aura.natsd import free_port, start_bus
from shared.bus import session
from shared.config import load_settings
from shared.credentials import ensure_credentials

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def write_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("aura test CA")).issuer_name(_name("aura test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("aura bus")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_a_tls_bus_admits_clients_that_trust_its_ca_and_no_one_else(tmp_path: Path) -> None:
    ca, cert, key = write_ca_and_server_cert(tmp_path)
    home = tmp_path / "home"
    server_settings = load_settings({"AURA_HOME": str(home), "AURA_NATS_TLS_SERVER_CERT_FILE": str(cert),
                                     "AURA_NATS_TLS_SERVER_KEY_FILE": str(key)})
    ensure_credentials(server_settings.keys)
    server = start_bus(server_settings, free_port())
    url = f"tls://127.0.0.1:{server.port}"
    try:
        trusting = load_settings({"AURA_HOME": str(home), "AURA_NATS_URL": url, "AURA_NATS_TLS_CA_FILE": str(ca)})

        async def as_operator() -> bool:
            async with session(trusting, "operator") as nc:
                return bool(nc.connected_url and nc.connected_url.scheme == "tls")

        assert asyncio.run(as_operator())

        async def refused(**options: object) -> str:
            try:
                nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3,
                                        error_cb=_quiet, **options)  # type: ignore[arg-type]
            except Exception as exc:
                return f"refused: {type(exc).__name__}: {exc}"
            await nc.close()
            return "connected"

        # A client that does not trust the CA cannot even finish the handshake...
        untrusting = ssl.create_default_context()
        assert asyncio.run(refused(tls=untrusting)).startswith("refused")
        # ...and one that does, but has no credential, is still refused.
        trusted_ctx = ssl.create_default_context(cafile=str(ca))
        outcome = asyncio.run(refused(tls=trusted_ctx))
        assert outcome.startswith("refused") and "authorization violation" in outcome.lower(), outcome
    finally:
        server.stop()


async def _quiet(_exc: Exception) -> None:
    return None
