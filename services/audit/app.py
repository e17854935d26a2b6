"""Composition root of the audit service."""

from __future__ import annotations

import contextlib
from pathlib import Path

from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc, event_pb2
from services.audit.api import AuditServicer, to_incoming
from services.audit.config import Settings
from services.audit.service import Service
from services.audit.store import PgEventStore
from svckit.app import App, serve
from svckit.audit import denial_recorder
from svckit.config import load
from svckit.db import create_pool, migrate
from svckit.server import start_server
from svckit.tls import TlsFiles

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(settings: Settings) -> App:
    stack = contextlib.AsyncExitStack()
    try:
        pool = await create_pool(settings.database_url)
        stack.push_async_callback(pool.close)
        await migrate(pool, MIGRATIONS)
        service = Service(PgEventStore(pool), max_batch=settings.max_batch)

        async def record_own(ev: event_pb2.Event) -> None:
            # The audit service records its own denials straight into its log.
            await service.append_events([to_incoming(ev)])

        server = await start_server(
            listen=settings.grpc_listen,
            tls=TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file),
            register=lambda s: audit_service_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(service), s),
            service_names=[audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name],
            on_denied=denial_recorder(record_own, settings.service_name),
            health_listen=settings.health_listen,
        )
    except BaseException:
        await stack.aclose()
        raise
    return App(server, stack, grace=settings.shutdown_grace_seconds, extras={"service": service})


def main() -> None:
    import uvloop

    settings = load(Settings)
    uvloop.run(serve(build, settings))
