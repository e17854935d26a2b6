"""Composition root of the identity service."""

from __future__ import annotations

import contextlib
from pathlib import Path

import grpc

from sendsafe.identity.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    staff_service_pb2,
    staff_service_pb2_grpc,
)
from sendsafe.keys.v1 import keys_service_pb2_grpc
from services.identity.adapters.hasher import Hasher
from services.identity.adapters.keys_client import KeysClient
from services.identity.adapters.messaging_client import MessagingBalances
from services.identity.adapters.store.pg import PgIdentityStore
from services.identity.api import AuthServicer, IdentityServicer, StaffServicer
from services.identity.config import Settings
from services.identity.service.accounts import Accounts
from services.identity.service.factors import Factors
from services.identity.service.sessions import Sessions
from services.identity.service.staff import Staff
from svckit.app import App, serve
from svckit.audit import AuditClient, denial_recorder
from svckit.config import load
from svckit.db import create_pool, migrate
from svckit.envelope import Envelope, KeysStubSource, follow_key_notices
from svckit.rpc import secure_channel
from svckit.server import start_server
from svckit.tasks import every, spawn
from svckit.tls import TlsFiles

PRUNE_EVERY_SECONDS = 600.0

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
        audit = AuditClient(audit_channel, strict_timeout=settings.audit_strict_timeout_seconds)
        audit.start()
        stack.push_async_callback(audit.close, settings.shutdown_grace_seconds)

        messaging_channel = secure_channel(
            settings.messaging_addr, tls, server_name="messaging", timeout=settings.messaging_timeout_seconds
        )
        stack.push_async_callback(messaging_channel.close)

        keys_channel = secure_channel(
            settings.keys_addr, tls, server_name="keys", timeout=settings.keys_timeout_seconds
        )
        stack.push_async_callback(keys_channel.close)

        store = PgIdentityStore(pool)
        hasher = Hasher(settings.argon2)
        stack.callback(hasher.close)
        envelope = Envelope(KeysStubSource(keys_service_pb2_grpc.KeysServiceStub(keys_channel)))
        # Rotation and destruction of an account's keys clear its cached data keys at once (keys notices).
        follow_key_notices(envelope, settings.redis_url, settings.redis_prefix, stack)
        sessions = Sessions(
            store,
            audit,
            envelope,
            hasher,
            platform_account_id=await store.platform_account_id(),
            policy=settings.password_policy,
            throttle=settings.throttle,
            settings=settings.sessions,
        )
        service = Accounts(
            store,
            MessagingBalances(messaging_channel, timeout=settings.messaging_timeout_seconds),
            audit,
            currency=settings.currency,
            default_country=settings.default_country,
            default_timezone=settings.default_timezone,
            audit_strict_timeout=settings.audit_strict_timeout_seconds,
            keys=KeysClient(keys_channel, timeout=settings.keys_timeout_seconds),
            hasher=hasher,
            policy=settings.password_policy,
        )
        factors = Factors(store, audit, sessions)
        staff = Staff(store, audit, sessions)

        def register(s: grpc.aio.Server) -> None:
            identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(service), s)
            auth_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(sessions, factors), s)
            staff_service_pb2_grpc.add_StaffServiceServicer_to_server(StaffServicer(sessions, staff), s)

        server = await start_server(
            listen=settings.grpc_listen,
            tls=tls,
            register=register,
            service_names=[
                identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
                auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
                staff_service_pb2.DESCRIPTOR.services_by_name["StaffService"].full_name,
            ],
            on_denied=denial_recorder(audit.record, settings.service_name),
            health_listen=settings.health_listen,
            step_up_max_age_seconds=settings.step_up_max_age_seconds,
        )
        # Login counters nobody touched for a day and long-dead sessions.
        spawn(stack, every("identity-prune", PRUNE_EVERY_SECONDS, store.prune), "identity-prune")
    except BaseException:
        await stack.aclose()
        raise
    return App(
        server, stack, grace=settings.shutdown_grace_seconds,
        extras={
            "service": service, "audit": audit, "sessions": sessions, "factors": factors, "staff": staff,
            "store": store,
        },
    )


def main() -> None:
    import uvloop

    settings = load(Settings)
    uvloop.run(serve(build, settings))
