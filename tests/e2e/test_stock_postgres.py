"""A stock Debian/Ubuntu PostgreSQL (issue 19): the server asks for a password on 127.0.0.1 (scram-sha-256).

A private throw-away cluster made with `initdb --auth=scram-sha-256` and a password, on a free port, stands
in for it. Through it the whole suite starts as `make run` starts it (tools.suite: databases created, every
service's migrations applied), the demo account is bootstrapped and its API key logs in through the gateway.
A DSN without the password is refused, which is what makes `make run` and the tests fall back to a private
cluster (tools/localpg.py); PGPASSWORD, the libpq variable, is honoured for a DSN that names no password.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.e2e.api_client import Http
from tests.support import RUN_ID, CertBundle
from tools.localpg import Cluster, probe, usable_admin_dsn
from tools.suite import SERVICES, Suite, SuiteConfig, drop_suite_data, ensure_databases, ensure_root_key


@pytest.fixture(scope="module")
def scram_pg() -> Iterator[Cluster]:
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="sst-scram-")), auth="scram-sha-256",
                      password=secrets.token_urlsafe(18))
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.dir, ignore_errors=True)


def _without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    return dsn.replace(f":{parts.password}@", "@", 1)


@pytest.fixture
def no_libpq_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))


def test_the_cluster_asks_for_a_scram_password(scram_pg: Cluster, no_libpq_password: None) -> None:
    hba = [line.split() for line in (scram_pg.data / "pg_hba.conf").read_text().splitlines()
           if line.strip() and not line.lstrip().startswith("#")]
    assert hba and {fields[-1] for fields in hba} == {"scram-sha-256"}, hba
    assert probe(_without_password(scram_pg.dsn)) == "refused"
    assert probe(scram_pg.dsn.replace(f":{scram_pg.password}@", ":wrong-password@")) == "refused"
    assert probe(scram_pg.dsn) == "ok"

    async def stored() -> str:
        conn = await asyncpg.connect(scram_pg.dsn)
        try:
            return str(await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'"))
        finally:
            await conn.close()

    assert asyncio.run(stored()).startswith("SCRAM-SHA-256$")


def test_pgpassword_is_honoured(scram_pg: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    assert scram_pg.password
    monkeypatch.setenv("PGPASSWORD", scram_pg.password)
    assert probe(_without_password(scram_pg.dsn)) == "ok"


def test_a_refusing_server_gets_a_private_cluster(scram_pg: Cluster, no_libpq_password: None) -> None:
    private = Cluster(Path(tempfile.mkdtemp(prefix="sst-pg-")))
    try:
        dsn, reach = usable_admin_dsn(_without_password(scram_pg.dsn), private.dir)
        assert reach == "refused"
        assert urlsplit(dsn).port not in (None, scram_pg.port)
        assert probe(dsn) == "ok"
        # A second start-up (make run again) finds it running and reuses it.
        assert usable_admin_dsn(_without_password(scram_pg.dsn), private.dir) == (dsn, "refused")
    finally:
        private.stop()
        shutil.rmtree(private.dir, ignore_errors=True)


def test_suite_starts_migrates_and_logs_in_through_scram(
    scram_pg: Cluster, certs: CertBundle, redis_url: str, tmp_path: Path, no_libpq_password: None,
) -> None:
    """The PG_DSN way: the password in the admin DSN reaches every service's DATABASE_URL."""
    from tools.bootstrap import bootstrap

    config = SuiteConfig(
        workdir=tmp_path / "run", certs=certs.dir, pg_admin_dsn=scram_pg.dsn, db_prefix=f"sst_{RUN_ID}_scram",
        redis_url=redis_url, redis_prefix=f"sst:{RUN_ID}:scram:", root_key_file=ensure_root_key(tmp_path / "root.key"),
    )
    ensure_databases(config)
    try:
        with Suite(config) as suite:
            creds = asyncio.run(bootstrap(identity=suite.addrs["identity"], keys=suite.addrs["keys"],
                                          certs=certs.dir, out=tmp_path / "demo.env",
                                          gateway_url=suite.gateway_url, announce_to_stdout=False))
            http = Http(suite.gateway_url, str(certs.public_ca))
            auth = (creds["SENDSAFE_USERNAME"], creds["SENDSAFE_API_KEY"])
            account = http.call("GET", "/v3/account", auth=auth)
            assert account.status == 200, account.body
            assert account.json()["data"]["username"] == creds["SENDSAFE_USERNAME"]
            assert http.call("GET", "/v3/account", auth=(auth[0], "not-the-key")).status == 401

        async def migrations() -> dict[str, int]:
            counts = {}
            for svc in SERVICES:
                conn = await asyncpg.connect(config.database_url(svc))
                try:
                    counts[svc] = int(await conn.fetchval("SELECT count(*) FROM schema_migrations"))
                finally:
                    await conn.close()
            return counts

        applied = asyncio.run(migrations())
        for svc in SERVICES:
            on_disk = len(list((Path(__file__).resolve().parents[2] / "services" / svc / "migrations").glob("*.sql")))
            assert applied[svc] == on_disk > 0, (svc, applied)
    finally:
        drop_suite_data(config)
