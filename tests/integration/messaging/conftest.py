"""Fixtures for the messaging integration tests: the real messaging API and worker over mTLS, real
PostgreSQL and Redis, and the real audit, keys and identity services."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import asyncpg
import pytest

from sendsafe.context.v1 import principal_pb2
from services.messaging.adapters.store.pg import PgMessageStore
from services.messaging.config import Settings
from services.messaging.service.messaging import MessagingService
from svckit.app import App
from svckit.envelope import Envelope
from tests.support import CertBundle, NewDatabase

PRINCIPAL_KEY = "x-sendsafe-principal-bin"


@pytest.fixture(scope="session")
async def keys_service(certs: CertBundle, new_database: NewDatabase, audit_app: App) -> AsyncIterator[App]:
    """The real keys service, in-process over mTLS (data keys wrapped per account under a test root key); its
    own rewrap pass is `keys_service.extras["rewrap"]`."""
    from services.keys.app import build as build_keys
    from services.keys.config import Settings as KeysSettings

    tls = certs.tls("keys")
    app = await build_keys(KeysSettings(
        tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca,
        database_url=await new_database("keys"), root_key=os.urandom(32).hex(),
        audit_addr=f"127.0.0.1:{audit_app.port}",
    ))
    yield app
    await app.stop()


@pytest.fixture(scope="session")
def keys_addr(keys_service: App) -> str:
    return f"127.0.0.1:{keys_service.port}"


@pytest.fixture(scope="session")
async def identity_app(certs: CertBundle, new_database: NewDatabase, audit_app: App, keys_addr: str
                       ) -> AsyncIterator[App]:
    """The real identity service (alert SMS re-check their owner there), with the same keys service. Its own
    calls to messaging (balances) are not used here: that address answers nothing."""
    from services.identity.app import build as build_identity
    from services.identity.config import Settings as IdentitySettings
    from tests.integration.identity.fakes import closed_port

    tls = certs.tls("identity")
    app = await build_identity(IdentitySettings(
        tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca,
        database_url=await new_database("msg_identity"), audit_addr=f"127.0.0.1:{audit_app.port}",
        messaging_addr=f"127.0.0.1:{closed_port()}", keys_addr=keys_addr,
        argon2_time_cost=1, argon2_memory_kib=8192,  # passwords only need to exist here
    ))
    yield app
    await app.stop()


@dataclass
class Messaging:
    settings: Settings
    api: App
    start_worker: Callable[..., Awaitable[App]]

    @property
    def service(self) -> MessagingService:
        return cast(MessagingService, self.api.extras["service"])

    @property
    def pool(self) -> asyncpg.Pool:
        return cast(asyncpg.Pool, self.api.extras["pool"])

    @property
    def store(self) -> PgMessageStore:
        return cast(PgMessageStore, self.api.extras["store"])

    @property
    def envelope(self) -> Envelope:
        return cast(Envelope, self.api.extras["envelope"])


@pytest.fixture
async def messaging_settings(
    certs: CertBundle, new_database: NewDatabase, redis_url: str, redis_prefix: str, audit_app: App, keys_addr: str,
    identity_app: App,
) -> Settings:
    tls = certs.tls("messaging")
    return Settings(
        tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca,
        database_url=await new_database("messaging"), redis_url=redis_url, redis_prefix=redis_prefix,
        audit_addr=f"127.0.0.1:{audit_app.port}", keys_addr=keys_addr, identity_addr=f"127.0.0.1:{identity_app.port}",
        relay_interval_seconds=0.2, outbox_grace_seconds=1.0, reclaim_idle_ms=1000, redeliver_seconds=1.0,
        worker_block_ms=200,
        sim_receipt_delay_ms=100, retry_base_ms=50, retry_cap_ms=200, shutdown_grace_seconds=1.0,
        # Limits are off unless a test turns them on (tests/integration/messaging/test_limits.py).
        account_rate=0.0, account_burst=0, key_rate=0.0, key_burst=0, prefix_limit=0,
        webhook_allow_private=True, webhook_ca_file=str(certs.public_ca), webhook_backoff_ms=100,
        db_pool_size=6,  # the machine's PostgreSQL is shared by every test run: stay small
    )


@pytest.fixture
async def messaging(messaging_settings: Settings) -> AsyncIterator[Messaging]:
    from services.messaging.app import build, build_worker

    api = await build(messaging_settings)
    workers: list[App] = []

    async def start_worker(**overrides: object) -> App:
        w = await build_worker(dataclasses.replace(messaging_settings, **overrides))  # type: ignore[arg-type]
        workers.append(w)
        return w

    yield Messaging(messaging_settings, api, start_worker)
    for w in workers:
        await w.stop()
    await api.stop()


def principal_md(
    account_id: int, *perms: str, user_id: int = 7, api_username: str = "alice", test_mode: bool = False,
    api_key_id: str = "key-1", deidentified: bool = False, staff: bool = False,
    limits: principal_pb2.SendLimits | None = None, idempotency_key: str = "",
) -> tuple[tuple[str, bytes | str], ...]:
    p = principal_pb2.Principal(
        account_id=account_id, user_id=user_id, api_username=api_username, test_mode=test_mode,
        permissions=list(perms or ("sms.send", "sms.read", "sms.settings")), request_id="req-1",
        api_key_id=api_key_id, sms_deidentify_message=deidentified, staff=staff, send_limits=limits,
    )
    md: tuple[tuple[str, bytes | str], ...] = ((PRINCIPAL_KEY, p.SerializeToString()),)
    if idempotency_key:
        md += (("idempotency-key", idempotency_key),)
    return md
