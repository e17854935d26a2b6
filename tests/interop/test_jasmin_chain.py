"""SendSafe -> Jasmin -> throwaway SMSC, and the receipts back the same way (`make interop`).

The real messaging API and worker (PostgreSQL, Redis, keys, audit over mTLS) with the SMPP carrier bound
as an ESME to Jasmin's SMPP server on 127.0.0.1:2775 (Jasmin 0.11.1 from PyPI, provisioned through jCli by
tools/interop/jasmin.py); Jasmin routes every message to tools.smsc (run in this process so its ledger can
be read), whose DLRs Jasmin turns into its own (`id:<uuid> ... stat:DELIVRD`) and sends back to SendSafe.
1,000 messages: each DELIVERED exactly once, 1,000 receipts, no duplicate at the SMSC. The delivered rate
through the chain is printed (the Jasmin-chain bench figure)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import cast

import asyncpg
import pytest

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from sendsafe.messaging.v1 import messaging_service_pb2_grpc
from services.messaging.adapters.smpp.carrier import SmppCarrier
from services.messaging.config import Settings
from tests.conftest import channel_as
from tests.integration.messaging.conftest import principal_md
from tests.integration.messaging.test_api import sms
from tests.support import CertBundle
from tools.interop.jasmin import HOST, JasminChain
from tools.smsc import Smsc

N = 1000
BATCH = 100
ACCOUNT = 9901

pytestmark = [pytest.mark.interop, pytest.mark.timeout(900)]


@pytest.fixture
async def chain() -> AsyncIterator[tuple[JasminChain, Smsc]]:
    smsc = Smsc(host=HOST, dlr_delay=0.05)
    port = await smsc.start()
    jasmin = JasminChain(run_smsc=False, smsc_port=port)
    await asyncio.to_thread(jasmin.up)  # blocking (processes, jCli); the SMSC answers Jasmin's bind meanwhile
    try:
        yield jasmin, smsc
    finally:
        await asyncio.to_thread(jasmin.down)
        await smsc.stop()


async def counts(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM messages WHERE account_id = $1 GROUP BY status",
                            ACCOUNT)
    return {r["status"]: r["n"] for r in rows}


async def test_1000_messages_through_jasmin_each_delivered_exactly_once(
    chain: tuple[JasminChain, Smsc], messaging_settings: Settings, certs: CertBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.messaging.app import build, build_worker

    jasmin, smsc = chain
    settings = dataclasses.replace(messaging_settings, trial_credit="1000")
    api = await build(settings)
    worker = None
    try:
        worker = await build_worker(dataclasses.replace(
            settings, carrier="smpp", smpp_host=HOST, smpp_port=jasmin.smpp_port, smpp_system_id=jasmin.system_id,
            smpp_password=jasmin.password, smpp_window=50, worker_batch=500, max_attempts=10,
            retry_base_ms=500, retry_cap_ms=5000,
        ))
        carrier = worker.extras["carrier"]
        assert isinstance(carrier, SmppCarrier)
        pool = cast(asyncpg.Pool, api.extras["pool"])
        start = time.perf_counter()
        async with channel_as(certs, "gateway", api.port, "messaging") as ch:
            stub = messaging_service_pb2_grpc.MessagingServiceStub(ch)
            for b in range(N // BATCH):
                # Distinct valid Australian mobile numbers and bodies: a duplicate at the SMSC is visible.
                req = pb.SendSmsRequest(messages=[sms(f"+614{12000000 + b * BATCH + i:08d}", f"chain {b * BATCH + i}")
                                                  for i in range(BATCH)])
                resp = await stub.SendSms(req, metadata=principal_md(ACCOUNT))
                assert resp.queued_count == BATCH
        deadline = time.monotonic() + 600
        sent_at = None
        while (c := await counts(pool)).get("DELIVERED", 0) < N:
            if sent_at is None and c.get("SENT", 0) + c.get("DELIVERED", 0) >= N:
                sent_at = time.perf_counter()
            assert not c.get("FAILED"), f"messages failed through the chain: {c}"
            assert time.monotonic() < deadline, f"not all delivered through Jasmin in time: {c}"
            await asyncio.sleep(0.2)  # polling observable state with a deadline
        elapsed = time.perf_counter() - start
        sent_at = sent_at or time.perf_counter()

        # Every message DELIVERED once, with one receipt, through the SMPP carrier, under Jasmin's UUID.
        assert await counts(pool) == {"DELIVERED": N}
        assert await pool.fetchval(
            "SELECT count(DISTINCT message_id) FROM receipts WHERE account_id = $1 AND status = 'DELIVERED'",
            ACCOUNT) == N
        assert await pool.fetchval("SELECT count(*) FROM receipts WHERE account_id = $1", ACCOUNT) == N
        refs = await pool.fetch("SELECT carrier, carrier_ref FROM messages WHERE account_id = $1", ACCOUNT)
        assert {r["carrier"] for r in refs} == {"smpp"}
        assert len({r["carrier_ref"] for r in refs}) == N
        assert all(len(r["carrier_ref"]) == 36 and r["carrier_ref"].count("-") == 4 for r in refs)  # Jasmin UUIDs
        # The SMSC behind Jasmin took each message exactly once, and every one of its DLRs was acknowledged.
        by_content = smsc.by_content()
        assert len(by_content) == N and set(by_content.values()) == {1}
        assert smsc.accepted == N
        assert carrier.receipts_applied >= N

        with capsys.disabled():
            print(f"\nJasmin chain (SendSafe -> Jasmin {jasmin.smpp_port} -> SMSC, DLRs back): {N} messages, "
                  f"all submitted in {sent_at - start:.1f} s, all DELIVERED in {elapsed:.1f} s = "
                  f"{N / elapsed:,.0f} delivered msg/s (window 50, one bind)")
    finally:
        if worker is not None:
            await worker.stop()
        await api.stop()
