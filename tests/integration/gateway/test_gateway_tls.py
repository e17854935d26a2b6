"""The public listener's TLS policy, probed with real handshakes.

TLS 1.2 must be ECDHE + AES-GCM only and TLS 1.1 and older must be refused. Every refused handshake
has a control: the same client context completes a handshake with a deliberately permissive TLS
server using the same certificate, so the refusal is the gateway's policy and not a client that could
not offer the suite or version. (asyncio aborts a failed server handshake without flushing the alert,
so the client sees a reset rather than the alert text.) Suites without ECDHE cannot be negotiated with
an ECDSA certificate at all; that they are also absent from the policy is checked on the context.
TLS 1.3 suite restriction needs OPENSSL_CONF at process start: see test_gateway_process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest

from gateway import tls
from tests.integration.gateway.gw_support import RunningGateway
from tests.support import CertBundle


def _client(certs: CertBundle, *, version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(certs.public_ca))
    ctx.minimum_version = version
    ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


async def _handshake(port: int, ctx: ssl.SSLContext) -> tuple[str, str, object]:
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 5
    )
    try:
        obj = writer.get_extra_info("ssl_object")
        return obj.version(), obj.cipher()[0], obj.compression()
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


@pytest.fixture(scope="module")
async def permissive_port(certs: CertBundle):  # type: ignore[no-untyped-def]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(certs.https_cert, certs.https_key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


REFUSED = (ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError)


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"])
async def test_tls12_ecdhe_aesgcm_accepted(certs: CertBundle, gw: RunningGateway, cipher: str) -> None:
    version, negotiated, compression = await _handshake(gw.port, _client(certs, version=ssl.TLSVersion.TLSv1_2,
                                                                          ciphers=cipher))
    assert (version, negotiated, compression) == ("TLSv1.2", cipher, None)


@pytest.mark.parametrize(
    "cipher",
    [
        "ECDHE-ECDSA-AES128-SHA256",  # ECDHE but CBC
        "ECDHE-ECDSA-AES256-SHA",  # ECDHE but CBC/SHA1
        "ECDHE-ECDSA-CHACHA20-POLY1305",  # ECDHE, AEAD, but not AES-GCM
    ],
)
async def test_tls12_other_suites_refused(
    certs: CertBundle, gw: RunningGateway, permissive_port: int, cipher: str
) -> None:
    ctx = _client(certs, version=ssl.TLSVersion.TLSv1_2, ciphers=cipher)
    assert (await _handshake(permissive_port, ctx))[1] == cipher  # control: the client can do it
    with pytest.raises(REFUSED):
        await _handshake(gw.port, ctx)


async def test_tls12_without_ecdhe_refused(certs: CertBundle, gw: RunningGateway) -> None:
    with pytest.raises(REFUSED):
        await _handshake(gw.port, _client(certs, version=ssl.TLSVersion.TLSv1_2, ciphers="AES128-GCM-SHA256"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1])
async def test_old_protocols_refused(
    certs: CertBundle, gw: RunningGateway, permissive_port: int, version: ssl.TLSVersion
) -> None:
    ctx = _client(certs, version=version, ciphers="DEFAULT:@SECLEVEL=0")
    try:
        got = (await _handshake(permissive_port, ctx))[0]
    except ssl.SSLError as exc:  # this OpenSSL build cannot speak it at all: nothing to prove
        pytest.skip(f"the local OpenSSL cannot negotiate {version.name}: {exc}")
    assert got == {"TLSv1_1": "TLSv1.1", "TLSv1": "TLSv1"}[version.name]
    with pytest.raises(REFUSED):
        await _handshake(gw.port, ctx)


async def test_tls13_aes_gcm_accepted(certs: CertBundle, gw: RunningGateway) -> None:
    version, negotiated, _ = await _handshake(gw.port, _client(certs, version=ssl.TLSVersion.TLSv1_3))
    assert version == "TLSv1.3" and negotiated in tls.TLS13_SUITES


def test_server_context_options(certs: CertBundle) -> None:
    ctx = tls.server_context(certs.https_cert, certs.https_key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert ctx.options & flag
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all(n.startswith("ECDHE-") and "GCM" in n for n in tls12)
