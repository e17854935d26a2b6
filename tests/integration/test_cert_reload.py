"""Certificates rotate under running processes, in both directions, without a restart.

Servers (svckit.server.start_server) present a rotated certificate on the next handshake; outbound
channels (svckit.rpc.secure_channel) present a rotated client certificate on the next call after their
check, while calls already in flight finish on the old connection. The last test walks the runbook's
CA rotation (trust both, reissue, drop the old CA) with one server and one client that never restart.
Each test has its own PKI under tmp_path: files are replaced the way `tools.pki.write_pem` (and the
kubelet) do it, by an atomic rename.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from svckit.rpc import secure_channel
from svckit.server import RunningServer, start_server
from svckit.tls import TlsFiles, server_credentials
from tools.pki import issue_leaf, make_ca, write_pem

CA = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


class Pki:
    """A CA or two and the files of one workload, rewritten in place as a rotation would."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def files(self, who: str) -> TlsFiles:
        return TlsFiles(self.root / f"{who}.crt", self.root / f"{who}.key", self.root / f"{who}-ca.crt")

    def issue(self, who: str, ca: CA, name: str) -> int:
        """Write a fresh leaf for SPIFFE name `name` into `who`'s files; returns its serial."""
        cert, key = issue_leaf(ca[0], ca[1], name)
        files = self.files(who)
        write_pem(files.key, key)
        write_pem(files.cert, cert)
        return int(cert.serial_number)

    def trust(self, who: str, *cas: CA) -> None:
        files = self.files(who)
        tmp = files.ca.with_suffix(".tmp")
        tmp.write_bytes(b"".join(open_pem(c[0]) for c in cas))
        tmp.replace(files.ca)


def open_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


async def presented_serial(port: int, client: TlsFiles, server_name: str = "audit") -> int:
    """Serial of the certificate the server presents in a fresh handshake (client certificate given)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(client.ca))
    ctx.load_cert_chain(client.cert, client.key)
    ctx.set_alpn_protocols(["h2"])
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name), 5
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return int(x509.load_der_x509_certificate(der).serial_number)
    finally:
        writer.transport.abort()  # only the handshake mattered; a TLS close would wait for the peer's


async def health_ok(channel: grpc.aio.Channel) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@contextlib.asynccontextmanager
async def svckit_server(files: TlsFiles) -> AsyncIterator[RunningServer]:
    server = await start_server(listen="127.0.0.1:0", tls=files, register=lambda s: None, service_names=[])
    try:
        yield server
    finally:
        await server.stop(0)


# -- servers ----------------------------------------------------------------------------------------------


async def test_server_presents_the_rotated_certificate_on_the_next_handshake(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    ca = make_ca("rotation test")
    first = pki.issue("server", ca, "audit")
    pki.trust("server", ca)
    pki.issue("client", ca, "gateway")
    pki.trust("client", ca)
    async with (
        svckit_server(pki.files("server")) as server,
        secure_channel(f"127.0.0.1:{server.port}", pki.files("client"), server_name="audit") as old,
    ):
        assert await health_ok(old)
        assert await presented_serial(server.port, pki.files("client")) == first
        assert await presented_serial(server.port, pki.files("client")) == first  # unchanged files: same

        second = pki.issue("server", ca, "audit")
        assert second != first
        assert await presented_serial(server.port, pki.files("client")) == second
        # The connection made before the rotation keeps working; nothing restarted.
        assert await health_ok(old)


async def test_server_keeps_its_certificate_while_a_rotation_is_half_written(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    ca = make_ca("rotation test")
    first = pki.issue("server", ca, "audit")
    pki.trust("server", ca)
    pki.issue("client", ca, "gateway")
    pki.trust("client", ca)
    async with svckit_server(pki.files("server")) as server:
        cert, key = issue_leaf(ca[0], ca[1], "audit")
        write_pem(pki.files("server").cert, cert)  # the new certificate, the old key still in place
        assert await presented_serial(server.port, pki.files("client")) == first
        write_pem(pki.files("server").key, key)
        assert await presented_serial(server.port, pki.files("client")) == int(cert.serial_number)


@contextlib.asynccontextmanager
async def ageing_server_and_channel(tmp_path: Path, max_age: float) -> AsyncIterator[grpc.aio.Channel]:
    """A svckit server that ends every connection after `max_age` seconds, and a channel to it."""
    pki = Pki(tmp_path)
    ca = make_ca("ageing test")
    pki.issue("server", ca, "audit")
    pki.trust("server", ca)
    pki.issue("client", ca, "gateway")
    pki.trust("client", ca)
    server = await start_server(listen="127.0.0.1:0", tls=pki.files("server"), register=lambda s: None,
                                service_names=[], max_connection_age_seconds=max_age)
    try:
        async with secure_channel(f"127.0.0.1:{server.port}", pki.files("client"), server_name="audit") as ch:
            yield ch
    finally:
        await server.stop(0)


async def test_server_ends_old_connections_so_every_peer_handshakes_again(tmp_path: Path) -> None:
    """A connection made before a rotation keeps its certificates; servers close connections after a
    maximum age (five minutes in production), so within that time every peer has handshaken again."""
    async with ageing_server_and_channel(tmp_path, 0.5) as ch:
        assert await health_ok(ch)
        assert ch.get_state() == grpc.ChannelConnectivity.READY
        # Nothing is called: the server itself ends the connection (GOAWAY) once it is old enough.
        await asyncio.wait_for(ch.wait_for_state_change(grpc.ChannelConnectivity.READY), 10)
        assert ch.get_state() != grpc.ChannelConnectivity.READY
        assert await health_ok(ch)  # and the client simply connects again


async def test_calls_keep_flowing_across_connections_the_server_ends(tmp_path: Path) -> None:
    """Servers end every connection at the maximum age (five minutes in production): a steady stream of
    concurrent calls crosses several of those ends without a single call failing."""
    async with ageing_server_and_channel(tmp_path, 0.3) as ch:
        assert await health_ok(ch)
        connections = 1

        async def count_connections() -> None:
            nonlocal connections
            state = ch.get_state()
            while True:
                await ch.wait_for_state_change(state)
                state = ch.get_state()
                if state == grpc.ChannelConnectivity.READY:
                    connections += 1

        watcher = asyncio.create_task(count_connections())
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 30
        calls = 0
        try:
            while connections < 4:
                assert loop.time() < give_up, f"only {connections} connections in 30 s"
                assert all(await asyncio.gather(*(health_ok(ch) for _ in range(8))))
                calls += 8
        finally:
            watcher.cancel()
        assert calls > 8


# -- clients ----------------------------------------------------------------------------------------------


class PeerEcho:
    """A bare mTLS server (svckit's credentials) answering with the serial of the client's certificate.
    A request `hold` waits until `release` is set, to keep a call in flight across a rotation."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def peer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"hold":
            self.holding.set()
            await self.release.wait()
        (pem,) = context.auth_context()["x509_pem_cert"]
        return str(x509.load_pem_x509_certificate(pem).serial_number).encode()


@contextlib.asynccontextmanager
async def echo_server(files: TlsFiles) -> AsyncIterator[tuple[int, PeerEcho]]:
    echo = PeerEcho()
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo.peer)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {"Peer": handler})])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(files))
    await server.start()
    try:
        yield port, echo
    finally:
        echo.release.set()
        await server.stop(0)


def peer_call(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary("/test.Echo/Peer")


async def test_channel_presents_the_rotated_client_certificate_without_rebuilding_callers(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    ca = make_ca("rotation test")
    pki.issue("server", ca, "audit")
    pki.trust("server", ca)
    first = pki.issue("client", ca, "gateway")
    pki.trust("client", ca)
    async with echo_server(pki.files("server")) as (port, echo):
        channel = secure_channel(
            f"127.0.0.1:{port}", pki.files("client"), server_name="audit", reload_check_seconds=0
        )
        async with channel:
            call = peer_call(channel)  # made once, like a stub's method
            assert int(await call(b"")) == first
            held = asyncio.ensure_future(call(b"hold"))
            await asyncio.wait_for(echo.holding.wait(), 5)

            second = pki.issue("client", ca, "gateway")
            assert int(await call(b"")) == second
            assert channel.generation == 1
            # The call that was in flight when the channel was replaced finishes on the old connection,
            # then the old channel closes.
            echo.release.set()
            assert int(await asyncio.wait_for(held, 5)) == first
            await asyncio.wait_for(channel.retired(), 10)
            assert int(await call(b"")) == second


async def test_channel_looks_at_the_files_at_most_every_check_interval(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    ca = make_ca("rotation test")
    pki.issue("server", ca, "audit")
    pki.trust("server", ca)
    first = pki.issue("client", ca, "gateway")
    pki.trust("client", ca)
    async with echo_server(pki.files("server")) as (port, _echo):
        channel = secure_channel(
            f"127.0.0.1:{port}", pki.files("client"), server_name="audit", reload_check_seconds=3600
        )
        async with channel:
            pki.issue("client", ca, "gateway")
            assert int(await peer_call(channel)(b"")) == first
            assert channel.generation == 0


async def test_channel_ignores_a_half_written_rotation_until_it_is_complete(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    ca = make_ca("rotation test")
    pki.issue("server", ca, "audit")
    pki.trust("server", ca)
    first = pki.issue("client", ca, "gateway")
    pki.trust("client", ca)
    async with echo_server(pki.files("server")) as (port, _echo):
        channel = secure_channel(
            f"127.0.0.1:{port}", pki.files("client"), server_name="audit", reload_check_seconds=0
        )
        async with channel:
            cert, key = issue_leaf(ca[0], ca[1], "gateway")
            write_pem(pki.files("client").cert, cert)
            assert int(await peer_call(channel)(b"")) == first
            write_pem(pki.files("client").key, key)
            assert int(await peer_call(channel)(b"")) == int(cert.serial_number)


# -- the runbook's CA rotation, end to end ----------------------------------------------------------------


async def test_ca_rotation_without_restarting_server_or_client(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    old_ca, new_ca = make_ca("old CA"), make_ca("new CA")
    pki.issue("server", old_ca, "audit")
    pki.trust("server", old_ca)
    pki.issue("client", old_ca, "gateway")
    pki.trust("client", old_ca)
    async with svckit_server(pki.files("server")) as server:
        channel = secure_channel(
            f"127.0.0.1:{server.port}", pki.files("client"), server_name="audit", reload_check_seconds=0
        )
        async with channel:
            assert await health_ok(channel)
            # 1. Trust both CAs everywhere.
            pki.trust("server", old_ca, new_ca)
            pki.trust("client", old_ca, new_ca)
            assert await health_ok(channel)
            # 2. Reissue every leaf from the new CA (server first, then client: both orders work).
            pki.issue("server", new_ca, "audit")
            assert await health_ok(channel)
            pki.issue("client", new_ca, "gateway")
            assert await health_ok(channel)
            # 3. Drop the old CA.
            pki.trust("server", new_ca)
            pki.trust("client", new_ca)
            assert await health_ok(channel)
            assert channel.generation == 3

            # The old CA is really gone: a leaf it signed is refused now.
            stale = Pki(tmp_path / "stale")
            stale.root.mkdir()
            stale.issue("client", old_ca, "gateway")
            stale.trust("client", new_ca)
            async with secure_channel(
                f"127.0.0.1:{server.port}", stale.files("client"), server_name="audit"
            ) as refused:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await health_ok(refused)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
