"""svckit.webhooks.WebhookClient against a real local HTTPS server: redirects are not followed, the policy
is applied again at delivery (IP literals, and a name whose DNS answer changed since configuration), the
connection goes only to the checked addresses, and a receiver that never answers costs one deadline."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from svckit import webhooks as w
from tests.support import CertBundle


@dataclass
class Server:
    hits: Counter[str] = field(default_factory=Counter)
    port: int = 0
    never: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        await request.read()
        if request.path == "/redirect":
            raise web.HTTPFound(location=f"https://localhost:{self.port}/target")
        if request.path == "/hang":
            await self.never.wait()
        return web.Response(text="ok")

    def url(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}"


@pytest.fixture
async def server(certs: CertBundle) -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_post("/{tail:.*}", srv.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs.https_cert, certs.https_key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    srv.port = int(runner.addresses[0][1])
    yield srv
    srv.never.set()
    await runner.cleanup()


def client_for(certs: CertBundle, **kw: object) -> w.WebhookClient:
    return w.WebhookClient(allow_private=True, ca_file=certs.public_ca, timeout=5.0, **kw)  # type: ignore[arg-type]


async def test_a_redirect_is_a_failure_and_is_not_followed(certs: CertBundle, server: Server) -> None:
    attempt = await client_for(certs).post(server.url("/redirect"), b"{}", {"Content-Type": "application/json"})
    assert attempt.status == 302 and not attempt.ok and attempt.error == "HTTP 302" and not attempt.refused
    assert server.hits == Counter({"/redirect": 1})  # the target never saw a request
    ok = await client_for(certs).post(server.url("/target"), b"{}", {})
    assert ok.ok and ok.host == "localhost" and server.hits["/target"] == 1


async def test_the_policy_is_applied_again_at_delivery(certs: CertBundle, server: Server) -> None:
    strict = w.WebhookClient(ca_file=certs.public_ca, timeout=5.0)
    for url in (server.url("/x", "127.0.0.1"), server.url("/x", "[::ffff:127.0.0.1]"), server.url("/x"),
                "https://127.0.0.1/x", "https://[64:ff9b::7f00:1]/x", "http://hooks.example.com/x"):
        attempt = await strict.post(url, b"{}", {})
        assert attempt.refused and attempt.status == 0, url
    # A name that was public when configured and points inward now (DNS rebinding between retries).
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
        return [(socket.AF_INET, a) for a in next(answers)]

    url = "https://hooks.example.com/x"
    assert await w.check_destination(url, resolve=rebinding) == url
    attempt = await w.WebhookClient(resolve=rebinding, timeout=5.0).post(url, b"{}", {})
    assert attempt.refused and attempt.error == "destination not allowed"
    assert sum(server.hits.values()) == 0


async def test_the_connection_goes_only_to_the_checked_addresses(certs: CertBundle, server: Server) -> None:
    # The pinned resolver: aiohttp connects to what the policy checked (here a fixed answer), with TLS still
    # verified against the name in the URL.
    async def fixed(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
        assert host == "localhost"
        return [(socket.AF_INET, "127.0.0.1")]

    attempt = await client_for(certs, resolve=fixed).post(server.url("/pinned"), b"{}", {})
    assert attempt.ok and server.hits["/pinned"] == 1

    async def elsewhere(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
        return [(socket.AF_INET, "127.0.0.2")]  # nothing listens there

    missed = await client_for(certs, resolve=elsewhere).post(server.url("/pinned"), b"{}", {})
    assert not missed.ok and missed.status == 0 and not missed.refused and server.hits["/pinned"] == 1


async def test_a_receiver_that_never_answers_costs_one_deadline(certs: CertBundle, server: Server) -> None:
    client = w.WebhookClient(allow_private=True, ca_file=certs.public_ca, timeout=0.5)
    attempt = await client.post(server.url("/hang"), b"{}", {})
    assert attempt.error == "timed out" and attempt.status == 0 and not attempt.refused
