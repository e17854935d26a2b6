"""Fixtures: fake backends over real mTLS (real Guard), the real gateway on port 0, an HTTPS client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import build
from sendsafe.audit.v1 import audit_service_pb2_grpc
from sendsafe.identity.v1 import identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2_grpc
from sendsafe.messaging.v1 import messaging_service_pb2_grpc
from svckit.server import start_server
from tests.integration.gateway.gw_support import (
    Backends,
    FakeAudit,
    FakeIdentity,
    FakeKeys,
    FakeMessaging,
    Recorder,
    RunningGateway,
    client_ssl,
    gateway_settings,
)
from tests.support import CertBundle


@pytest.fixture(scope="session")
async def gw_backends(certs: CertBundle) -> AsyncIterator[Backends]:
    rec = Recorder()
    b = Backends(rec, FakeKeys(rec), FakeIdentity(rec), FakeMessaging(rec), FakeAudit(rec), {})
    adders = {
        "keys": (keys_service_pb2_grpc.add_KeysServiceServicer_to_server, b.keys, "sendsafe.keys.v1.KeysService"),
        "identity": (identity_service_pb2_grpc.add_IdentityServiceServicer_to_server, b.identity,
                     "sendsafe.identity.v1.IdentityService"),
        "messaging": (messaging_service_pb2_grpc.add_MessagingServiceServicer_to_server, b.messaging,
                      "sendsafe.messaging.v1.MessagingService"),
        "audit": (audit_service_pb2_grpc.add_AuditServiceServicer_to_server, b.audit,
                  "sendsafe.audit.v1.AuditService"),
    }
    for name, (add, servicer, full_name) in adders.items():
        b.servers[name] = await start_server(
            listen="127.0.0.1:0",
            tls=certs.tls(name),
            register=lambda s, add=add, servicer=servicer: add(servicer, s),
            service_names=[full_name],
        )
    yield b
    for server in b.servers.values():
        await server.stop(0)


@pytest.fixture(scope="session")
async def gw(certs: CertBundle, gw_backends: Backends) -> AsyncIterator[RunningGateway]:
    spans = InMemorySpanExporter()
    gateway = await build(gateway_settings(certs, gw_backends), span_processors=[SimpleSpanProcessor(spans)])
    await gateway.start()
    yield RunningGateway(gateway, spans)
    await gateway.stop()


@pytest.fixture(scope="session")
async def http(certs: CertBundle) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_ssl(certs))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


