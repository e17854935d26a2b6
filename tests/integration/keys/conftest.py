"""Fixtures for the keys integration tests: the real keys service in-process over mTLS, with real PostgreSQL,
Redis and audit service, and a clock the test controls (expiry, rolls and destruction to the second)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from svckit.app import App
from tests.support import CertBundle, NewDatabase

ROOT_KEY = os.urandom(32)


class Clock:
    """The keys service's notion of now: starts at the real time, moves only when the test says so."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> datetime:
        self.now += timedelta(**kw)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def empty(dsn: str) -> None:
    """Remove every row of the keys database (cheaper than a new database per test)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DO $$ BEGIN IF to_regclass('api_keys') IS NOT NULL THEN"
            " TRUNCATE api_keys, account_kek_versions, account_keys, receipt_signing_keys; END IF; END $$"
        )
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def keys_database(new_database: NewDatabase) -> str:
    """One database for the module's tests (creating and dropping one per test costs more than the tests)."""
    return await new_database("keys")


@pytest.fixture
async def keys_app(
    audit_app: App, certs: CertBundle, keys_database: str, redis_url: str, redis_prefix: str, tmp_path: Path,
    clock: Clock,
) -> AsyncIterator[App]:
    """A fresh keys service on an emptied database."""
    from services.keys.app import build
    from services.keys.config import Settings

    await empty(keys_database)

    key_file = tmp_path / "root-key"
    key_file.write_text(ROOT_KEY.hex())
    key_file.chmod(0o600)
    tls = certs.tls("keys")
    app = await build(
        Settings(
            tls_cert_file=tls.cert,
            tls_key_file=tls.key,
            tls_ca_file=tls.ca,
            database_url=keys_database,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            audit_addr=f"127.0.0.1:{audit_app.port}",
            root_key_file=key_file,
            last_used_flush_seconds=3600,  # tests flush explicitly
            maintenance_seconds=3600,  # tests run maintenance explicitly
            min_destruction_pending_seconds=60,
            # Keys alone: no data owner reports here (test_key_retirement.py checks retirement against them).
            rewrap_services="",
        ),
        now=clock,
    )
    yield app
    await app.stop()
