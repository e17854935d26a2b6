"""Streamed routes through the real gateway: a server-streaming RPC returning google.api.HttpBody (the account export's
download) reaches the client chunk by chunk with the messages' content type; a refusal before the first message is
an ordinary JSON error; a failure after the headers cuts the body short, so the client can tell it is incomplete.
The backend is a fake AccountExportService under the real Guard and mTLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from google.api import httpbody_pb2

from gateway.app import build
from sendsafe.audit.v1 import audit_service_pb2_grpc
from sendsafe.identity.v1 import account_pb2, identity_service_pb2, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2_grpc
from sendsafe.messaging.v1 import export_service_pb2_grpc, messaging_service_pb2_grpc
from svckit.errors import FailedPrecondition, Unavailable
from svckit.server import start_server
from tests.integration.gateway.gw_support import (
    ALICE,
    ALL_PERMISSIONS,
    READER_KEY,
    Backends,
    FakeAudit,
    FakeIdentity,
    FakeKeys,
    FakeMessaging,
    Recorder,
    RunningGateway,
    basic,
    gateway_settings,
)
from tests.support import CertBundle

CHUNKS = [b'{"type":"export"}\n', b'{"type":"message","body":"one"}\n' * 500, b'{"type":"message"}\n']


class Owner(FakeIdentity):
    """Alice as the account's main user: she holds account.export."""

    async def GetUser(self, request, context):  # type: ignore[no-untyped-def]
        self.rec.record("GetUser", request, context)
        return identity_service_pb2.GetUserResponse(user=account_pb2.User(
            user_id=7, account_id=42, api_username="alice", active=True, is_main=True,
            permissions=[*ALL_PERMISSIONS, "account.export"]))


class FakeExports(export_service_pb2_grpc.AccountExportServiceServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    async def DownloadAccountExport(self, request, context):  # type: ignore[no-untyped-def]
        self.rec.record("DownloadAccountExport", request, context)
        if request.export_id == "gone":
            raise FailedPrecondition("downloaded already", reason="EXPORT_ALREADY_DOWNLOADED")
        for i, data in enumerate(CHUNKS):
            if request.export_id == "cut" and i == 2:
                raise Unavailable("the store went away", reason="BACKEND_UNAVAILABLE")
            yield httpbody_pb2.HttpBody(content_type="application/x-ndjson", data=data)
            await asyncio.sleep(0)


@pytest.fixture(scope="module")
async def streaming_gw(certs: CertBundle) -> AsyncIterator[tuple[RunningGateway, Backends, Recorder]]:
    rec = Recorder()
    b = Backends(rec, FakeKeys(rec), Owner(rec), FakeMessaging(rec), FakeAudit(rec), {})
    exports = FakeExports(rec)

    def messaging(server: Any) -> None:
        messaging_service_pb2_grpc.add_MessagingServiceServicer_to_server(b.messaging, server)
        export_service_pb2_grpc.add_AccountExportServiceServicer_to_server(exports, server)

    registrations = {
        "keys": lambda s: keys_service_pb2_grpc.add_KeysServiceServicer_to_server(b.keys, s),
        "identity": lambda s: identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(b.identity, s),
        "messaging": messaging,
        "audit": lambda s: audit_service_pb2_grpc.add_AuditServiceServicer_to_server(b.audit, s),
    }
    for name, register in registrations.items():
        b.servers[name] = await start_server(listen="127.0.0.1:0", tls=certs.tls(name), register=register,
                                             service_names=[])
    gateway = await build(gateway_settings(certs, b))
    await gateway.start()
    yield RunningGateway(gateway, None), b, rec  # type: ignore[arg-type]
    await gateway.stop()
    for server in b.servers.values():
        await server.stop(0)


def _url(gw: RunningGateway, export_id: str) -> str:
    return f"{gw.url}/v1/account/exports/{export_id}/download"


async def test_a_stream_reaches_the_client_chunk_by_chunk(
    streaming_gw: tuple[RunningGateway, Backends, Recorder], http: aiohttp.ClientSession
) -> None:
    gw, _, rec = streaming_gw
    async with http.get(_url(gw, "whole"), headers=ALICE) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        assert resp.headers.get("Transfer-Encoding") == "chunked"  # written as it came, never gathered first
        assert resp.headers["X-Request-Id"] and resp.headers["traceparent"]
        assert resp.headers["Cache-Control"] == "no-store"  # the security headers too
        body = await resp.read()
    assert body == b"".join(CHUNKS)
    call = rec.last("DownloadAccountExport")
    assert call.principal is not None and call.principal.account_id == 42
    assert call.request.export_id == "whole"


async def test_a_refusal_before_the_first_chunk_is_a_json_error(
    streaming_gw: tuple[RunningGateway, Backends, Recorder], http: aiohttp.ClientSession
) -> None:
    gw, _, _ = streaming_gw
    async with http.get(_url(gw, "gone"), headers=ALICE) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["error"]["reason"] == "EXPORT_ALREADY_DOWNLOADED"


async def test_a_failure_after_the_headers_cuts_the_body_short(
    streaming_gw: tuple[RunningGateway, Backends, Recorder], http: aiohttp.ClientSession
) -> None:
    gw, _, _ = streaming_gw
    async with http.get(_url(gw, "cut"), headers=ALICE) as resp:
        assert resp.status == 200
        got = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in resp.content.iter_any():
                got += piece
    assert got == b"".join(CHUNKS[:2])  # what came before the failure, and no clean end


async def test_without_the_permission_nothing_is_streamed(
    streaming_gw: tuple[RunningGateway, Backends, Recorder], http: aiohttp.ClientSession
) -> None:
    gw, _, rec = streaming_gw
    before = rec.count("DownloadAccountExport")
    async with http.get(_url(gw, "whole"), headers=basic("alice", READER_KEY)) as resp:  # a key scoped to sms.read
        assert resp.status == 403
        assert (await resp.json())["error"]["reason"] == "API_KEY_SCOPE"
    assert rec.count("DownloadAccountExport") == before
