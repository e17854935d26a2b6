"""Composition root of the identity service."""

from __future__ import annotations

import contextlib
from pathlib import Path

import grpc

from sendsafe.identity.v1 import (
    account_policy_service_pb2,
    account_policy_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
    closure_service_pb2,
    closure_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    signup_service_pb2,
    signup_service_pb2_grpc,
    staff_service_pb2,
    staff_service_pb2_grpc,
)
from sendsafe.keys.v1 import keys_service_pb2_grpc
from services.identity.adapters.closure_peers import ClosurePeerClients
from services.identity.adapters.hasher import Hasher
from services.identity.adapters.keys_client import KeysClient
from services.identity.adapters.messaging_client import MessagingBalances, MessagingMail
from services.identity.adapters.sender_limits_api import SenderLimitsIdentityServicer
from services.identity.adapters.signup_api import SignupServicer, StaffSignupServicer
from services.identity.adapters.store.pg import PgIdentityStore
from services.identity.adapters.store.rewrap import rewrap_columns
from services.identity.api import AccountPolicyServicer, AuthServicer, ClosureServicer
from services.identity.config import Settings
from services.identity.service.account_policy import AccountPolicies
from services.identity.service.accounts import Accounts
from services.identity.service.closure import Closures
from services.identity.service.factors import Factors
from services.identity.service.sessions import Sessions
from services.identity.service.signup import Signups
from services.identity.service.staff import Staff
from svckit.app import App, serve
from svckit.audit import AuditClient, denial_recorder
from svckit.config import load
from svckit.db import create_pool, migrate
from svckit.envelope import Envelope, KeysStubSource, follow_key_notices
from svckit.envelope_rewrap import rewrap_pass
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

        envelope = Envelope(KeysStubSource(keys_service_pb2_grpc.KeysServiceStub(keys_channel)))
        # Users' personal data is sealed under the account's keys by the store (adapters/store/personal.py).
        store = PgIdentityStore(pool, envelope)
        hasher = Hasher(settings.argon2)
        stack.callback(hasher.close)
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
            policies=store,  # accounts' sign-in policies govern logins and every session resolve
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
        policies = AccountPolicies(
            store, audit, audit_strict_timeout=settings.audit_strict_timeout_seconds,
            min_session_lifetime_seconds=settings.account_min_session_lifetime_seconds,
        )
        # Account closure (issue 15): driven from here, through the other services' internal purge RPCs.
        closures = Closures(
            store, ClosurePeerClients(keys_channel, messaging_channel, audit_channel), audit, envelope,
            platform_account_id=sessions.platform_account_id, pending_seconds=settings.closure_pending_seconds,
            audit_strict_timeout=settings.audit_strict_timeout_seconds,
        )
        # Self-service sign-up (issue 15): accounts made by `service`, codes emailed through messaging.
        signups = Signups(
            service, store, store, MessagingMail(messaging_channel), hasher, audit, policy=settings.signup,
            password_policy=settings.password_policy, default_country=settings.default_country,
            default_timezone=settings.default_timezone, audit_strict_timeout=settings.audit_strict_timeout_seconds,
        )
        staff = Staff(store, audit, sessions, closures, signups)

        def register(s: grpc.aio.Server) -> None:
            identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(SenderLimitsIdentityServicer(service), s)
            auth_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(sessions, factors), s)
            staff_service_pb2_grpc.add_StaffServiceServicer_to_server(StaffSignupServicer(sessions, staff), s)
            account_policy_service_pb2_grpc.add_AccountPolicyServiceServicer_to_server(
                AccountPolicyServicer(policies), s)
            closure_service_pb2_grpc.add_AccountClosureServiceServicer_to_server(ClosureServicer(closures), s)
            signup_service_pb2_grpc.add_SignupServiceServicer_to_server(SignupServicer(signups), s)

        server = await start_server(
            listen=settings.grpc_listen,
            tls=tls,
            register=register,
            service_names=[
                identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
                auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
                staff_service_pb2.DESCRIPTOR.services_by_name["StaffService"].full_name,
                account_policy_service_pb2.DESCRIPTOR.services_by_name["AccountPolicyService"].full_name,
                closure_service_pb2.DESCRIPTOR.services_by_name["AccountClosureService"].full_name,
                signup_service_pb2.DESCRIPTOR.services_by_name["SignupService"].full_name,
            ],
            on_denied=denial_recorder(audit.record, settings.service_name),
            health_listen=settings.health_listen,
            step_up_max_age_seconds=settings.step_up_max_age_seconds,
        )
        # Login counters nobody touched for a day and long-dead sessions.
        spawn(stack, every("identity-prune", PRUNE_EVERY_SECONDS, store.prune), "identity-prune")
        # Backfill: personal data written in clear before migration 0004 is sealed soon after start (and
        # retried while the keys service is unreachable); a no-op query once nothing is left.
        spawn(stack, every("identity-seal-personal", PRUNE_EVERY_SECONDS, store.seal_personal_in_clear, first=0.0),
              "identity-seal-personal")
        # Stored secrets move to their account's newest key version; keys retires a version only after this.
        keys_stub = keys_service_pb2_grpc.KeysServiceStub(keys_channel)
        columns = rewrap_columns(pool)

        async def rewrap() -> object:
            return await rewrap_pass(envelope, columns, keys_stub)

        spawn(stack, every("identity-rewrap", settings.rewrap_seconds, rewrap), "identity-rewrap")
        # Closures: steps a peer could not take are retried; ended windows are purged (idempotent, many replicas).
        spawn(stack, every("identity-closure-sweep", settings.closure_sweep_seconds, closures.sweep),
              "identity-closure-sweep")
    except BaseException:
        await stack.aclose()
        raise
    return App(
        server, stack, grace=settings.shutdown_grace_seconds,
        extras={
            "service": service, "audit": audit, "sessions": sessions, "factors": factors, "staff": staff,
            "store": store, "rewrap": rewrap, "policies": policies, "closures": closures,
            "signups": signups,
        },
    )


def main() -> None:
    import uvloop

    settings = load(Settings)
    uvloop.run(serve(build, settings))
