"""Fault tests on PRIVATE servers (never the machine's shared PostgreSQL or Redis): Redis restarted without
persistence (the dispatch stream is lost) and PostgreSQL restarted under load. After recovery every
accepted message reaches exactly one final state, none is delivered twice to the carrier simulator, none
is lost, and the balance is exactly the trial credit minus what was accepted. (A worker killed
mid-batch: test_pipeline.py; a carrier timing out: test_http_carrier.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from services.messaging.config import Settings
from svckit.app import App
from svckit.rpcstatus import error_metadata, error_reason
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.fakes import free_port
from tests.integration.messaging.test_api import eventually, sms, stub_for
from tests.support import CertBundle
from tools.localpg import PgMissingError, pg_bin

PRICE = Decimal("0.077")


def _wait_until(check: object, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclasses.dataclass
class PrivateRedis:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # No persistence at all: a restart loses every stream entry, the worst case for the pipeline.
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_until(lambda: subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                                           text=True).stdout.strip() == "PONG", 10, "the private redis-server")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:  # a requirement (README): missing, the test fails, never skips
        pytest.fail("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)", pytrace=False)
    r = PrivateRedis(free_port())
    r.start()
    yield r
    if r.proc is not None and r.proc.poll() is None:
        r.kill()


@dataclasses.dataclass
class PrivatePostgres:
    """A throw-away cluster: initdb as the postgres user into a temp dir, pg_ctl on a free port."""

    dir: Path
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args) if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)

    def init(self) -> None:
        self._as_postgres(pg_bin("initdb"), "-A", "trust", "-U", "postgres", "-D", str(self.dir / "data"))

    def start(self) -> None:
        self._as_postgres(pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._as_postgres(pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-w", "-m", "fast", "stop")


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    try:  # on PATH or where Debian puts them (/usr/lib/postgresql/<v>/bin); missing, the test fails, never skips
        pg_bin("initdb"), pg_bin("pg_ctl")
    except PgMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    d = Path(tempfile.mkdtemp(prefix="sst-pg-"))
    if os.geteuid() == 0:
        shutil.chown(d, "postgres", "postgres")
    pg = PrivatePostgres(d, free_port())
    pg.init()
    pg.start()
    yield pg
    try:
        pg.stop()
    except subprocess.CalledProcessError:
        pass
    shutil.rmtree(d, ignore_errors=True)


async def _start(settings: Settings) -> tuple[App, App]:
    from services.messaging.app import build, build_worker

    api = await build(settings)
    worker = await build_worker(settings)
    return api, worker


@pytest.fixture
async def apps() -> AsyncIterator[list[App]]:
    started: list[App] = []
    yield started
    for app in reversed(started):
        await app.stop()


async def _final_states(m: Messaging, account_id: int) -> dict[str, str]:
    rows = await m.pool.fetch("SELECT id, status FROM messages WHERE account_id = $1", account_id)
    return {str(r["id"]).upper(): r["status"] for r in rows}


async def _check_exactly_once(m: Messaging, account_id: int, accepted: set[str]) -> None:
    async def sim_rows() -> list[Any]:
        return list(await m.pool.fetch(
            "SELECT upper(message_id::text) AS id, receipt_time IS NOT NULL AS receipted"
            " FROM carrier_sim_submissions WHERE message_id = ANY($1::uuid[])", list(accepted)))

    async def settled() -> bool:
        # The simulator marks a receipt sent after the message took it (at-least-once): a restart between
        # the two leaves the mark for the pump's next round, so wait for both.
        states = await _final_states(m, account_id)
        return (set(states) == accepted and set(states.values()) == {"DELIVERED"}
                and all(r["receipted"] for r in await sim_rows()))

    await eventually(settled, timeout=60, what="every accepted message to be delivered after recovery")
    sim = await sim_rows()
    assert {r["id"] for r in sim} == accepted and len(sim) == len(accepted)  # one submission each
    assert await m.pool.fetchval("SELECT count(*) FROM receipts WHERE account_id = $1", account_id) == len(accepted)
    assert await m.service.get_balance(account_id) == Decimal("10") - len(accepted) * PRICE


async def test_redis_restarted_without_persistence_loses_no_message(
    messaging_settings: Settings, private_redis: PrivateRedis, certs: CertBundle, apps: list[App]
) -> None:
    from services.messaging.app import build, build_worker

    settings = dataclasses.replace(messaging_settings, redis_url=private_redis.url)
    api = await build(settings)
    apps.append(api)
    m = Messaging(settings, api, None)  # type: ignore[arg-type]
    accepted: set[str] = set()
    ch, stub = stub_for(m, certs)
    async with ch:
        for i in range(3):  # published to the stream; no worker has read them yet
            batch = [sms(f"+614123450{i}{k}", f"a{i}{k}") for k in range(10)]
            r = await stub.SendSms(pb.SendSmsRequest(messages=batch), metadata=principal_md(9501))  # type: ignore[attr-defined]
            accepted |= {x.message_id for x in r.messages}
        length = subprocess.run(["redis-cli", "-p", str(private_redis.port), "xlen", settings.dispatch_stream],
                                capture_output=True, text=True, check=True).stdout.strip()
        assert int(length) == 3
        private_redis.kill()  # the stream, its entries and the consumer group are gone
        for i in range(3):  # sends keep being accepted while Redis is down (publish -> outbox; limits fail open)
            batch = [sms(f"+614123451{i}{k}", f"b{i}{k}") for k in range(10)]
            r = await stub.SendSms(pb.SendSmsRequest(messages=batch), metadata=principal_md(9501))  # type: ignore[attr-defined]
            assert r.queued_count == 10
            accepted |= {x.message_id for x in r.messages}
        private_redis.start()  # empty
        apps.append(await build_worker(settings))
        await _check_exactly_once(m, 9501, accepted)


async def test_postgres_restarted_under_load_loses_nothing_and_retries_charge_once(
    messaging_settings: Settings, private_pg: PrivatePostgres, certs: CertBundle, apps: list[App]
) -> None:
    settings = dataclasses.replace(messaging_settings, database_url=private_pg.dsn)
    api, worker = await _start(settings)
    apps.extend([api, worker])
    m = Messaging(settings, api, None)  # type: ignore[arg-type]
    accepted: set[str] = set()
    refused: list[tuple[str, str]] = []  # (gRPC code, reason) of every refusal
    retry_after: set[str] = set()

    async def send(key: str, body: str) -> None:
        """A client that retries with the same Idempotency-Key until it gets an answer."""
        req = pb.SendSmsRequest(messages=[sms(f"+6141234{n:04d}", f"{body}-{n}") for n in range(5)])  # type: ignore[attr-defined]
        while True:
            try:
                r = await stub.SendSms(req, metadata=principal_md(9502, idempotency_key=key), timeout=5)
                accepted.update(x.message_id for x in r.messages if x.status == "SUCCESS")
                return
            except grpc.aio.AioRpcError as err:
                refused.append((err.code().name, error_reason(err)))
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    retry_after.add(error_metadata(err).get("retry_after_seconds", ""))
                await asyncio.sleep(0.2)

    ch, stub = stub_for(m, certs)
    async with ch:
        await asyncio.gather(*(send(f"k{i}", f"before{i}") for i in range(4)))
        outage = asyncio.get_running_loop().run_in_executor(None, lambda: (private_pg.stop(), private_pg.start()))
        n = 4
        while not outage.done():  # keep sending through the restart
            await asyncio.gather(*(send(f"k{i}", f"during{i}") for i in range(n, n + 3)))
            n += 3
        await outage
        await asyncio.gather(*(send(f"k{i}", f"before{i}") for i in range(4)))  # replays: nothing new
        assert refused, "no request met the outage: the test proved nothing"
        # An outage is a retryable refusal, never an internal error.
        assert {code for code, _ in refused} <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, refused
        assert {reason for code, reason in refused if code == "UNAVAILABLE"} <= {"BACKEND_UNAVAILABLE"}, refused
        assert retry_after <= {"1"}, retry_after  # the gateway turns it into Retry-After
        assert len(accepted) == 5 * n
        await _check_exactly_once(m, 9502, accepted)
