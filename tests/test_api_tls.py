"""HTTPS: with server.tls_cert/tls_key the daemon serves TLS only; a client that trusts the
certificate gets /health and /v1/models (the openai client included), one that does not is
refused, plain HTTP to the port gets no answer, and a bad key pair is a config error."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.daemon import Daemon
from appliance.errors import ConfigError
from test_api_support import serving, write_config


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A P-256 certificate for 127.0.0.1/localhost, valid for a day; (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appliance test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return cert_path, key_path


async def test_https_with_a_trusted_self_signed_cert(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = write_config(tmp_path, {"m": {"source": "file:///nonexistent/m.gguf"}},
                            server={"tls_cert": str(cert), "tls_key": str(key)})
    trusting = ssl.create_default_context(cafile=str(cert))
    async with serving(settings) as d:
        assert d.url.startswith("https://127.0.0.1:")
        async with aiohttp.ClientSession() as s:
            async with s.get(d.url + "/health", ssl=trusting) as r:
                assert r.status == 200
            async with s.get(d.url + "/v1/models", ssl=trusting) as r:
                assert r.status == 200
                assert [m["id"] for m in (await r.json())["data"]] == ["m"]
            # Not trusted (system CAs only): the handshake fails, nothing is served.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await s.get(d.url + "/health")
            # Plain HTTP to the TLS port: no HTTP answer at all.
            with pytest.raises(aiohttp.ClientError):
                await s.get(d.url.replace("https://", "http://") + "/health")
        async with openai.AsyncOpenAI(
            base_url=d.url + "/v1", api_key="unused", max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(verify=trusting),
        ) as c:
            assert [m.id for m in (await c.models.list()).data] == ["m"]


def test_unloadable_key_pair_is_a_config_error(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    other_key = tmp_path / "other.pem"
    other_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    settings = write_config(tmp_path, {}, server={"tls_cert": str(cert), "tls_key": str(other_key)})
    with pytest.raises(ConfigError, match="server.tls_cert: cannot load certificate/key"):
        Daemon(settings, host="127.0.0.1", port=0)
