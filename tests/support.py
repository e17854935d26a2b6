"""Pytest fixtures shared by every test suite (loaded as a plugin: `-p tests.support` in pyproject.toml).

Tests use the real PostgreSQL and Redis this machine runs, but never their data: each test session
creates its own databases (`sst_<run>_<name>`) and dropped them at the end, and each test gets its own
Redis key prefix, deleted afterwards. Certificates are minted per session under a temp directory.
Override the servers with TEST_PG_DSN or PG_DSN (an admin DSN; tools/localpg.py) and TEST_REDIS_URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

from svckit.db import drop_database, ensure_database
from svckit.tls import TlsFiles

RUN_ID = uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class CertBundle:
    dir: Path

    def tls(self, name: str) -> TlsFiles:
        return TlsFiles(self.dir / f"{name}.crt", self.dir / f"{name}.key", self.dir / "internal-ca.crt")

    @property
    def public_ca(self) -> Path:
        return self.dir / "public-ca.crt"

    @property
    def https_cert(self) -> Path:
        return self.dir / "gateway-https.crt"

    @property
    def https_key(self) -> Path:
        return self.dir / "gateway-https.key"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertBundle:
    from tools.certs import ensure_dev_certs

    out = tmp_path_factory.mktemp("certs") / "dev"
    ensure_dev_certs(out)
    return CertBundle(out)


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """TEST_PG_DSN, else PG_DSN, else postgres@127.0.0.1:5432 (PGPASSWORD / ~/.pgpass may hold the password).
    A server that answers but refuses the login (stock Debian: scram-sha-256 on 127.0.0.1) gets a private
    throw-away cluster for the session instead; a server that does not answer fails the tests."""
    from tools.localpg import Cluster, admin_dsn, probe, redact

    dsn = admin_dsn("TEST_PG_DSN")
    reach = probe(dsn)
    if reach == "ok":
        yield dsn
        return
    if reach == "down":
        pytest.fail(f"PostgreSQL does not answer at {redact(dsn)}: start it, or set PG_DSN (see tools/localpg.py)",
                    pytrace=False)
    import shutil
    import tempfile

    cluster = Cluster(Path(tempfile.mkdtemp(prefix="sst-pg-")))  # not under pytest's 0700 base: postgres reads it
    try:
        yield cluster.ensure()
    finally:
        cluster.stop()
        shutil.rmtree(cluster.dir, ignore_errors=True)


NewDatabase = Callable[[str], Awaitable[str]]


@pytest.fixture(scope="session")
async def new_database(pg_admin_dsn: str) -> AsyncIterator[NewDatabase]:
    """Factory: `await new_database("identity")` -> DSN of a fresh, empty database."""
    made: list[str] = []

    async def make(name: str) -> str:
        parts = urlsplit(pg_admin_dsn)
        db = f"sst_{RUN_ID}_{name}_{len(made)}"
        dsn = urlunsplit(parts._replace(path=f"/{db}"))
        await ensure_database(dsn)
        made.append(dsn)
        return dsn

    yield make
    for dsn in made:
        await drop_database(dsn)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix owned by one test; its keys are deleted afterwards."""
    prefix = f"sst:{RUN_ID}:{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def session_redis_prefix() -> Iterator[str]:
    yield f"sst:{RUN_ID}:session:"


def stepped_up_now() -> Any:
    """A session principal's `mfa_time` right after a step-up: privileged RPCs called with a session need it
    (every service's guard checks the step-up age)."""
    from google.protobuf import timestamp_pb2

    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return now


# -- the no-skip rule (issue 19) ----------------------------------------------------------------------------
# A test that cannot run for lack of a tool or server must FAIL: a skip on a machine without, say, initdb would
# leave CI green while the test never ran. Only these skips are allowed, each for a reason that is not a missing
# requirement: the interop chain runs from `make interop`; an OpenSSL build that cannot speak TLS 1.0/1.1 at
# all leaves nothing to prove about refusing it.
ALLOWED_SKIPS = ("interop:", "the local OpenSSL cannot negotiate")
_SKIPPED: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")
        if not reason.startswith(ALLOWED_SKIPS):
            _SKIPPED.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _SKIPPED:
        terminalreporter.section("skipped tests fail the run (tests/support.py: the no-skip rule)", red=True)
        for nodeid, reason in _SKIPPED:
            terminalreporter.line(f"{nodeid}: {reason}")
