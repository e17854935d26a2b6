"""The gateway's public HTTPS certificate rotates without a restart.

The real gateway (gateway.app.build, real audit service upstream) listens with a certificate from one
public CA; the files are then replaced by a certificate from another CA. New connections get the new
certificate (with or without SNI); a keep-alive connection opened before keeps being served; a
half-written rotation (new certificate, old key) is not used.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from gateway import tls as gateway_tls
from gateway.app import Gateway, build
from gateway.config import Settings
from svckit.app import App
from tests.support import CertBundle
from tools.pki import issue_leaf, make_ca, write_pem


@dataclass
class Edge:
    root: Path
    cert: Path
    key: Path

    def ca_file(self, name: str) -> Path:
        return self.root / f"{name}.crt"

    def issue(self, ca_name: str) -> tuple[int, x509.Certificate, object]:
        ca = self.cas[ca_name]
        cert, key = issue_leaf(ca[0], ca[1], "gateway-https", spiffe=False, client=False,
                               dns=["localhost"], ips=["127.0.0.1"])
        return int(cert.serial_number), cert, key

    def rotate(self, ca_name: str) -> int:
        serial, cert, key = self.issue(ca_name)
        write_pem(self.key, key)  # type: ignore[arg-type]
        write_pem(self.cert, cert)
        return serial

    cas: dict[str, tuple[x509.Certificate, object]]


@pytest.fixture
async def edge(tmp_path: Path) -> Edge:
    cas = {}
    for name in ("edge-a", "edge-b"):
        cert, key = make_ca(name)
        write_pem(tmp_path / f"{name}.crt", cert)
        cas[name] = (cert, key)
    e = Edge(tmp_path, tmp_path / "https.crt", tmp_path / "https.key", cas)  # type: ignore[arg-type]
    e.rotate("edge-a")
    return e


@pytest.fixture
async def gateway(
    edge: Edge, certs: CertBundle, audit_app: App, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    monkeypatch.setattr(gateway_tls, "RELOAD_CHECK_SECONDS", 0.0)  # look at the files on every handshake
    mtls = certs.tls("gateway")
    unused = "127.0.0.1:9"  # requests below never reach identity, keys or messaging
    gw = await build(Settings(
        https_listen="127.0.0.1:0", https_cert_file=edge.cert, https_key_file=edge.key,
        tls_cert_file=mtls.cert, tls_key_file=mtls.key, tls_ca_file=mtls.ca,
        identity_addr=unused, keys_addr=unused, messaging_addr=unused, audit_addr=f"127.0.0.1:{audit_app.port}",
        shutdown_grace_seconds=1.0,
    ))
    await gw.start()
    yield gw
    await gw.stop()


def trusting(ca_file: Path, *, sni: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = sni  # without SNI (an IP address), verify the chain only
    return ctx


class Conn:
    """One HTTPS/1.1 keep-alive connection, raw, so the test knows which connection served what."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext, *, sni: bool = True) -> Conn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if sni else "127.0.0.1"), 5)
        return cls(reader, writer)

    @property
    def serial(self) -> int:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return int(x509.load_der_x509_certificate(der).serial_number)

    async def get_status(self, path: str) -> int:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode().split("\r\n")
        length = next(int(v) for k, _, v in (h.partition(": ") for h in lines[1:]) if k.lower() == "content-length")
        await asyncio.wait_for(self.reader.readexactly(length), 5)
        return int(lines[0].split()[1])

    def close(self) -> None:
        self.writer.transport.abort()


async def test_new_connections_get_the_rotated_certificate_old_ones_keep_theirs(gateway: Gateway, edge: Edge) -> None:
    port = gateway.port
    before = await Conn.open(port, trusting(edge.ca_file("edge-a")))
    try:
        first = before.serial
        assert await before.get_status("/v1/nothing-here") == 404

        second = edge.rotate("edge-b")
        after = await Conn.open(port, trusting(edge.ca_file("edge-b")))
        try:
            assert after.serial == second != first
            assert await after.get_status("/v1/nothing-here") == 404
        finally:
            after.close()
        no_sni = await Conn.open(port, trusting(edge.ca_file("edge-b"), sni=False), sni=False)
        no_sni.close()
        assert no_sni.serial == second
        # A client that trusts only the old CA cannot start a new connection any more ...
        with pytest.raises(ssl.SSLCertVerificationError):
            await Conn.open(port, trusting(edge.ca_file("edge-a")))
        # ... while the connection it opened before the rotation is still served, with its certificate.
        assert await before.get_status("/v1/nothing-here") == 404
        assert before.serial == first
        assert gateway.https is not None and gateway.https.generation == 1
    finally:
        before.close()


async def test_a_half_written_rotation_keeps_the_current_certificate(gateway: Gateway, edge: Edge) -> None:
    port = gateway.port
    conn = await Conn.open(port, trusting(edge.ca_file("edge-a")))
    first = conn.serial
    conn.close()
    serial, cert, key = edge.issue("edge-b")
    write_pem(edge.cert, cert)  # the new certificate, the old key still in place
    conn = await Conn.open(port, trusting(edge.ca_file("edge-a")))
    conn.close()
    assert conn.serial == first
    write_pem(edge.key, key)  # type: ignore[arg-type]
    conn = await Conn.open(port, trusting(edge.ca_file("edge-b")))
    conn.close()
    assert conn.serial == serial
