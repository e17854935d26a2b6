"""How many messages/s SendSms accepts in 100-message batches, in-process over mTLS (printed, not asserted)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import cast

import asyncpg

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from sendsafe.messaging.v1 import messaging_service_pb2_grpc
from services.messaging.config import Settings
from tests.conftest import channel_as
from tests.integration.messaging.conftest import principal_md
from tests.integration.messaging.test_api import sms
from tests.support import CertBundle

BATCH = 100
BATCHES = 60
CONCURRENCY = 8


async def test_send_throughput_in_100_message_batches(messaging_settings: Settings, certs: CertBundle) -> None:
    from services.messaging.app import build

    app = await build(dataclasses.replace(messaging_settings, trial_credit="1000000"))
    try:
        async with channel_as(certs, "gateway", app.port, "messaging") as ch:
            stub = messaging_service_pb2_grpc.MessagingServiceStub(ch)
            # Distinct valid Australian mobile numbers, so validation does real work.
            request = pb.SendSmsRequest(messages=[sms(f"+614{12000000 + i:08d}", f"bench message {i}")
                                                  for i in range(BATCH)])
            md = principal_md(801)
            await stub.SendSms(request, metadata=md)  # warm up: connection, data key, balance row
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(BATCHES):
                queue.put_nowait(i)
            latencies: list[float] = []

            async def client() -> None:
                while not queue.empty():
                    queue.get_nowait()
                    t0 = time.perf_counter()
                    resp = await stub.SendSms(request, metadata=md)
                    latencies.append(time.perf_counter() - t0)
                    assert resp.queued_count == BATCH

            start = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
            elapsed = time.perf_counter() - start
        latencies.sort()
        rate = BATCH * BATCHES / elapsed
        print(f"\nSendSms in-process, {BATCH}-message batches, concurrency {CONCURRENCY}: {rate:,.0f} messages/s "
              f"(p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
              f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms per request)")
        pool = cast(asyncpg.Pool, app.extras["pool"])
        assert await pool.fetchval("SELECT count(*) FROM messages") == BATCH * (BATCHES + 1)
    finally:
        await app.stop()


async def test_worker_delivery_rate(messaging_settings: Settings, certs: CertBundle) -> None:
    """Messages/s one in-process worker moves from QUEUED to SENT (simulator, no latency); printed."""
    from services.messaging.app import build, build_worker

    n = 3000
    app = await build(dataclasses.replace(messaging_settings, trial_credit="1000000"))
    try:
        async with channel_as(certs, "gateway", app.port, "messaging") as ch:
            stub = messaging_service_pb2_grpc.MessagingServiceStub(ch)
            request = pb.SendSmsRequest(messages=[sms(f"+614{12000000 + i:08d}", f"m {i}") for i in range(BATCH)])
            for _ in range(n // BATCH):
                await stub.SendSms(request, metadata=principal_md(802))
        pool = cast(asyncpg.Pool, app.extras["pool"])
        start = time.perf_counter()
        worker = await build_worker(dataclasses.replace(messaging_settings, sim_receipt_delay_ms=60_000))
        try:
            while await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'SENT'") < n:
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - start
        finally:
            await worker.stop()
        print(f"\nworker (1 process, in-process with the API, batches of {messaging_settings.worker_batch}): "
              f"{n / elapsed:,.0f} messages/s claimed, decrypted, submitted and recorded")
    finally:
        await app.stop()
