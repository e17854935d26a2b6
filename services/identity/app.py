"""Composition root of the identity service."""

from __future__ import annotations

import contextlib
from pathlib import Path

from sendsafe.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from services.identity.api import IdentityServicer
from services.identity.clients import MessagingBalances
from services.identity.config import Settings
from services.identity.service import Service
from services.identity.store import PgIdentityStore
from svckit.app import App, serve
from svckit.audit import AuditClient, denial_recorder
from svckit.config import load
from svckit.db import create_pool, migrate
from svckit.rpc import secure_channel
from svckit.server import start_server
from svckit.tls import TlsFiles

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(settings: Settings) -> App:
    stack = contextlib.AsyncExitStack()
    try:
        tls = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
        pool = await create_pool(settings.database_url)
        stack.push_async_callback(pool.close)
        await migrate(pool, MIGRATIONS)

        audit_channel = secure_channel(settings.audit_addr, tls, server_name="audit")
        stack.push_async_callback(audit_channel.close)
        audit = AuditClient(audit_channel)
        audit.start()
        stack.push_async_callback(audit.close, settings.shutdown_grace_seconds)

        messaging_channel = secure_channel(
            settings.messaging_addr, tls, server_name="messaging", timeout=settings.messaging_timeout_seconds
        )
        stack.push_async_callback(messaging_channel.close)

        service = Service(
            PgIdentityStore(pool),
            MessagingBalances(messaging_channel, timeout=settings.messaging_timeout_seconds),
            audit,
            currency=settings.currency,
            default_country=settings.default_country,
            default_timezone=settings.default_timezone,
            audit_strict_timeout=settings.audit_strict_timeout_seconds,
        )
        server = await start_server(
            listen=settings.grpc_listen,
            tls=tls,
            register=lambda s: identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(
                IdentityServicer(service), s
            ),
            service_names=[identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name],
            on_denied=denial_recorder(audit.record, settings.service_name),
            health_listen=settings.health_listen,
        )
    except BaseException:
        await stack.aclose()
        raise
    return App(server, stack, grace=settings.shutdown_grace_seconds, extras={"service": service, "audit": audit})


def main() -> None:
    import uvloop

    settings = load(Settings)
    uvloop.run(serve(build, settings))
