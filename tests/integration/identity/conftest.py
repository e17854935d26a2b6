"""Identity over real mTLS and PostgreSQL, with small fake messaging and keys servers (real mTLS,
real Guard) standing in for the services being built alongside."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sendsafe.keys.v1 import keys_service_pb2_grpc
from sendsafe.messaging.v1 import messaging_service_pb2_grpc
from services.identity.config import Settings
from svckit.app import App
from svckit.server import RunningServer, start_server
from tests.integration.identity.fakes import FakeKeys, FakeMessaging, closed_port
from tests.support import CertBundle, NewDatabase


@pytest.fixture(scope="session")
async def fake_messaging(certs: CertBundle) -> AsyncIterator[tuple[FakeMessaging, RunningServer]]:
    servicer = FakeMessaging()  # type: ignore[abstract]  # only GetBalance is needed
    server = await start_server(
        listen="127.0.0.1:0",
        tls=certs.tls("messaging"),
        register=lambda s: messaging_service_pb2_grpc.add_MessagingServiceServicer_to_server(servicer, s),
        service_names=["sendsafe.messaging.v1.MessagingService"],
    )
    yield servicer, server
    await server.stop(0)


@pytest.fixture(scope="session")
async def fake_keys(certs: CertBundle) -> AsyncIterator[tuple[FakeKeys, RunningServer]]:
    servicer = FakeKeys()  # type: ignore[abstract]  # only IssueApiKey is needed
    server = await start_server(
        listen="127.0.0.1:0",
        tls=certs.tls("keys"),
        register=lambda s: keys_service_pb2_grpc.add_KeysServiceServicer_to_server(servicer, s),
        service_names=["sendsafe.keys.v1.KeysService"],
    )
    yield servicer, server
    await server.stop(0)


@pytest.fixture(scope="session")
async def identity_dsn(new_database: NewDatabase) -> str:
    return await new_database("identity")


# Cheap argon2 for tests that only need a password to exist (the cost itself is measured by bench/identity.py).
FAST_ARGON2: dict[str, object] = {"argon2_time_cost": 1, "argon2_memory_kib": 8192}


def identity_settings(
    certs: CertBundle, dsn: str, *, audit_port: int, messaging_port: int, keys_port: int, **kw: object
) -> Settings:
    tls = certs.tls("identity")
    return Settings(
        tls_cert_file=tls.cert,
        tls_key_file=tls.key,
        tls_ca_file=tls.ca,
        database_url=dsn,
        audit_addr=f"127.0.0.1:{audit_port}",
        messaging_addr=f"127.0.0.1:{messaging_port}",
        keys_addr=f"127.0.0.1:{keys_port}",
        **{**FAST_ARGON2, **kw},  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
async def keys_app(
    certs: CertBundle, new_database: NewDatabase, audit_app: App, redis_url: str, session_redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[App]:
    """The real keys service: sub-accounts' API keys and the data keys that encrypt TOTP secrets."""
    import os

    from services.keys.app import build
    from services.keys.config import Settings as KeysSettings

    key_file = tmp_path_factory.mktemp("identity-keys") / "root-key"
    key_file.write_text(os.urandom(32).hex())
    key_file.chmod(0o600)
    tls = certs.tls("keys")
    app = await build(
        KeysSettings(
            tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca,
            database_url=await new_database("idkeys"), redis_url=redis_url,
            redis_prefix=session_redis_prefix + "idkeys:", audit_addr=f"127.0.0.1:{audit_app.port}",
            root_key_file=key_file,
        )
    )
    yield app
    await app.stop()


@pytest.fixture(scope="session")
async def identity_app(
    certs: CertBundle, identity_dsn: str, audit_app: App, keys_app: App,
    fake_messaging: tuple[FakeMessaging, RunningServer],
) -> AsyncIterator[App]:
    """The real identity service, in-process, over mTLS on a free port, with the real audit and keys."""
    from services.identity.app import build

    app = await build(
        identity_settings(
            certs, identity_dsn, audit_port=audit_app.port, messaging_port=fake_messaging[1].port,
            keys_port=keys_app.port,
        )
    )
    yield app
    await app.stop()


@pytest.fixture(scope="session")
async def cut_off_identity(certs: CertBundle, identity_dsn: str, keys_app: App) -> AsyncIterator[App]:
    """A second identity on the same database whose audit and messaging addresses answer nothing (keys
    answers: users' personal data is sealed and opened through it)."""
    from services.identity.app import build

    app = await build(
        identity_settings(
            certs,
            identity_dsn,
            audit_port=closed_port(),
            messaging_port=closed_port(),
            keys_port=keys_app.port,
            audit_strict_timeout_seconds=0.5,
            messaging_timeout_seconds=0.5,
            shutdown_grace_seconds=0.2,
        )
    )
    yield app
    await app.stop()
