"""The delivery pipeline: outbox relay, scheduled messages, retries and dead letters, a killed worker."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from services.messaging.config import Settings
from services.messaging.domain.records import BODY_RECORD, TO_RECORD, NewMessage
from services.messaging.domain.statuses import MessageStatus
from svckit.envelope import aad_for
from svckit.redisconn import make_redis
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.test_api import REAL_NUMBER, TEST_NUMBER, eventually, sms, stub_for
from tests.support import CertBundle
from tools.smsc import Smsc

REPO = Path(__file__).resolve().parents[3]


async def statuses(m: Messaging) -> dict[str, str]:
    return {str(r["id"]).upper(): r["status"] for r in await m.pool.fetch("SELECT id, status FROM messages")}


async def test_relay_publishes_what_a_crash_left_in_the_outbox(messaging: Messaging) -> None:
    """Commit without publishing (the API died between commit and XADD): the relay publishes it."""
    env = messaging.envelope
    mid = str(uuid.uuid4()).upper()
    acct = 701
    body_ct, to_ct = await env.encrypt_many(
        acct, [(aad_for(acct, BODY_RECORD, mid), b"orphan"), (aad_for(acct, TO_RECORD, mid), REAL_NUMBER.encode())]
    )
    row = NewMessage(
        id=mid, account_id=acct, user_id=1, api_username="alice", status=MessageStatus.QUEUED, body_ct=body_ct,
        to_ct=to_ct, sender="", country="AU", encoding="GSM7", parts=1, price=0, is_test=False,  # type: ignore[arg-type]
        custom_string="", source="", from_email="", list_id="", contact_id="", schedule=None,
        publish_at=int(time.time()) - 1,
    )
    async with messaging.store.send_tx() as tx:
        batch = await tx.insert_messages([row])
    assert batch is not None
    redis = make_redis(messaging.settings.redis_url)
    try:
        async def published() -> bool:
            entries: Any = await redis.xrange(messaging.settings.dispatch_stream)
            return any(f.get(b"m") == mid.encode() for _, f in entries)

        await eventually(published, what="the relay to publish the orphan")
    finally:
        await redis.aclose()
    # The batch stays (with a later time) until its message settles: if the entry were lost, it would be
    # published again. The relay moves it after the stream write, so that can lag the entry a little.
    async def moved_on() -> bool:
        return await messaging.pool.fetchval(
            "SELECT count(*) FROM outbox_batches WHERE id = $1 AND $2::uuid = ANY(message_ids)"
            " AND available_time > now() AND publish_count >= 1", batch, mid) == 1  # >1: republished meanwhile

    await eventually(moved_on, what="the relay to move the published batch's time on")
    await messaging.start_worker()

    async def delivered() -> bool:
        return (await statuses(messaging)).get(mid) == "DELIVERED"

    await eventually(delivered, what="the orphan to be delivered")

    async def cleared() -> bool:  # when the settled batch next comes due, the relay deletes it
        return await messaging.pool.fetchval("SELECT count(*) FROM outbox_batches") == 0

    await eventually(cleared, what="the settled batch to be deleted")
    assert await messaging.pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_scheduled_message_waits_for_its_time(messaging: Messaging, certs: CertBundle) -> None:
    await messaging.start_worker()
    ch, stub = stub_for(messaging, certs)
    async with ch:
        at = int(time.time()) + 2
        resp = await stub.SendSms(pb.SendSmsRequest(messages=[sms(TEST_NUMBER, "later", schedule=at)]),  # type: ignore[attr-defined]
                                  metadata=principal_md(702))
        mid = resp.messages[0].message_id
        assert resp.messages[0].schedule == at
        page = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(), metadata=principal_md(702))  # type: ignore[attr-defined]
        assert page.data[0].status == "Scheduled" and page.data[0].schedule == str(at)

    async def delivered() -> bool:
        return (await statuses(messaging)).get(mid) == "DELIVERED"

    await eventually(delivered, what="the scheduled message to be delivered")
    sent_at = await messaging.pool.fetchval("SELECT extract(epoch FROM sent_time) FROM messages")
    assert sent_at >= at


async def test_temporary_failures_retry_then_dead_letter(messaging: Messaging, certs: CertBundle) -> None:
    await messaging.start_worker(sim_failure_rate=1.0, max_attempts=3)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        resp = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "doomed")]),  # type: ignore[attr-defined]
                                  metadata=principal_md(703))
        mid = resp.messages[0].message_id

        async def failed() -> bool:
            return (await statuses(messaging)).get(mid) == "FAILED"

        await eventually(failed, what="the message to fail after its retries")
        page = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(), metadata=principal_md(703))  # type: ignore[attr-defined]
        h = page.data[0]
        assert (h.status, h.status_code, h.error_code) == ("Failed", "301", "7")
    assert await messaging.pool.fetchval("SELECT attempts FROM messages") == 3
    assert await messaging.pool.fetchval("SELECT count(*) FROM carrier_sim_submissions") == 0
    redis = make_redis(messaging.settings.redis_url)
    try:
        dead: Any = await redis.xrange(messaging.settings.dead_stream)
    finally:
        await redis.aclose()
    assert [f[b"m"] for _, f in dead] == [mid.encode()]


async def test_some_failures_are_retried_and_everything_is_delivered_once(
    messaging: Messaging, certs: CertBundle
) -> None:
    await messaging.start_worker(sim_failure_rate=0.3, sim_seed=42, max_attempts=10, worker_batch=20)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        resp = await stub.SendSms(pb.SendSmsRequest(messages=[sms(TEST_NUMBER, f"r{i}") for i in range(100)]),  # type: ignore[attr-defined]
                                  metadata=principal_md(704))
    assert resp.queued_count == 100

    async def all_delivered() -> bool:
        return set((await statuses(messaging)).values()) == {"DELIVERED"}

    await eventually(all_delivered, what="all 100 delivered despite failures")
    retried = await messaging.pool.fetchval("SELECT count(*) FROM messages WHERE attempts > 1")
    assert retried > 0  # the seeded failure rate did bite
    counts = [r["submit_count"] for r in await messaging.pool.fetch("SELECT submit_count FROM carrier_sim_submissions")]
    assert len(counts) == 100 and set(counts) == {1}


def _worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESSAGING_", "OTEL_"))}
    env.update(
        PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'gen' / 'python'}",
        SERVICE_NAME="messaging",
        TLS_CERT_FILE=str(settings.tls_cert_file),
        TLS_KEY_FILE=str(settings.tls_key_file),
        TLS_CA_FILE=str(settings.tls_ca_file),
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        REDIS_PREFIX=settings.redis_prefix,
        KEYS_ADDR=settings.keys_addr,
        AUDIT_ADDR=settings.audit_addr,
        GRPC_LISTEN="127.0.0.1:0",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.mark.parametrize("carrier", ["simulator", "smpp"])
async def test_killed_worker_loses_nothing_and_delivers_once(
    messaging: Messaging, certs: CertBundle, tmp_path: Path, carrier: str
) -> None:
    n = 200
    ch, stub = stub_for(messaging, certs)
    async with ch:
        resp = await stub.SendSms(pb.SendSmsRequest(messages=[sms(TEST_NUMBER, f"k{i}") for i in range(n)]),  # type: ignore[attr-defined]
                                  metadata=principal_md(705))
    accepted = {m.message_id for m in resp.messages if m.status == "SUCCESS"}
    assert len(accepted) == n
    body_of = {m.message_id: f"k{i}" for i, m in enumerate(resp.messages)}

    # A real worker process; every carrier call takes 300 ms, so a 20-message batch is in flight long enough.
    # SMPP: tools/smsc.py answers each submit_sm after 300 ms (window 10) and sends the DLRs to whoever is
    # bound; it does not deduplicate (SMPP has no idempotency key), so what it counts twice must be among
    # the messages in flight at the kill.
    smsc = Smsc(system_id="ss", password="pw", dlr_delay=0.05, resp_delay=0.3, dlr_retry=0.3, dlr_attempts=5)
    extra = {"MESSAGING_SIM_LATENCY_MS": "300"}
    if carrier == "smpp":
        await smsc.start()
        extra = {"MESSAGING_CARRIER": "smpp", "MESSAGING_SMPP_HOST": "127.0.0.1", "MESSAGING_SMPP_PORT": str(smsc.port),
                 "MESSAGING_SMPP_SYSTEM_ID": "ss", "MESSAGING_SMPP_PASSWORD": "pw"}

    async def submit_counts() -> dict[str, int]:
        if carrier == "smpp":
            by_body = collections.Counter(s.short_message.decode() for s in smsc.submissions)
            return {mid: by_body[b] for mid, b in body_of.items() if by_body[b]}
        return {str(r["message_id"]).upper(): r["submit_count"] for r in
                await messaging.pool.fetch("SELECT message_id, submit_count FROM carrier_sim_submissions")}

    log = tmp_path / "worker1.log"
    env = _worker_env(messaging.settings, MESSAGING_WORKER_BATCH="20", MESSAGING_RECLAIM_IDLE_MS="1000",
                      MESSAGING_SIM_RECEIPT_DELAY_MS="50", **extra)
    try:
        with open(log, "wb") as fh:
            first = subprocess.Popen([sys.executable, "-m", "services.messaging", "worker"], cwd=REPO, env=env,
                                     stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            async def mid_batch() -> bool:
                s = list((await statuses(messaging)).values())
                return s.count("SENDING") > 0 and (s.count("SENT") + s.count("DELIVERED")) > 0

            await eventually(mid_batch, timeout=60, what="the first worker to be mid-batch")
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        at_kill = await statuses(messaging)
        in_flight = {mid for mid, st in at_kill.items() if st == "SENDING"}
        assert in_flight and len(in_flight) < n
        submitted_before = set(await submit_counts())

        # A new worker (another process, another consumer name) takes over the dead one's pending entries.
        smsc.resp_delay = 0.0
        with open(tmp_path / "worker2.log", "wb") as fh:
            second = subprocess.Popen([sys.executable, "-m", "services.messaging", "worker"], cwd=REPO,
                                      env={**env, "MESSAGING_SIM_LATENCY_MS": "0"},
                                      stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            async def all_delivered() -> bool:
                s = await statuses(messaging)
                return set(s) == accepted and set(s.values()) == {"DELIVERED"}

            await eventually(all_delivered, timeout=60, what="every accepted message to be delivered")
        finally:
            second.send_signal(signal.SIGTERM)
            try:  # in a thread: this loop also runs the SMSC, which must answer the worker's unbind
                await asyncio.to_thread(second.wait, 15)
            except subprocess.TimeoutExpired:
                second.kill()
                second.wait()
        assert second.returncode == 0, (tmp_path / "worker2.log").read_text()[-3000:]
        counts = await submit_counts()
        if carrier == "smpp":
            assert smsc.unbinds == 1  # the second worker unbound on SIGTERM
    finally:
        await smsc.stop()

    assert set(counts) == accepted  # every accepted message reached the carrier
    receipts = await messaging.pool.fetch("SELECT message_id, count(*) AS n FROM receipts WHERE account_id = 705"
                                          " GROUP BY message_id")
    assert len(receipts) == n and {r["n"] for r in receipts} == {1}  # and got exactly one final state
    if carrier == "simulator":
        assert all(r["receipt_time"] is not None for r in await messaging.pool.fetch(
            "SELECT receipt_time FROM carrier_sim_submissions"))
    for mid, c in counts.items():
        if mid not in in_flight:
            assert c == 1, "a message that was not in flight was submitted twice"
    resubmitted = {mid for mid, c in counts.items() if c > 1}
    assert resubmitted <= in_flight & submitted_before
    dedup = "carrier deduplicated" if carrier == "simulator" else "the SMSC counted them twice"
    print(f"\nkilled worker ({carrier}): {len(in_flight)} in flight at kill, {len(resubmitted)} re-submitted "
          f"({dedup}), {n} delivered once")
    await asyncio.sleep(0)


async def test_dead_consumers_without_pending_entries_are_pruned(messaging: Messaging) -> None:
    from services.messaging.adapters.stream import GROUP, DispatchStream

    redis = make_redis(messaging.settings.redis_url)
    try:
        stream = DispatchStream(redis, messaging.settings.dispatch_stream, messaging.settings.dead_stream)
        await stream.ensure_group()
        await stream.publish([str(uuid.uuid4()).upper()])
        held = await stream.read("dead-with-pending", pending=False, count=1, block_ms=10)
        assert len(held) == 1
        await stream.publish([str(uuid.uuid4()).upper()])
        done = await stream.read("dead-idle", pending=False, count=1, block_ms=10)
        await stream.ack([e.entry_id for e in done])
        await asyncio.sleep(0.05)
        assert await stream.prune_consumers(idle_ms=10, keep="me") == 1
        names = {c["name"] for c in await redis.xinfo_consumers(stream.stream, GROUP)}
        assert names == {b"dead-with-pending"}  # its entry still needs reclaiming
    finally:
        await redis.aclose()


async def test_unclaimed_messages_are_republished_ever_less_often(messaging: Messaging, certs: CertBundle) -> None:
    """No worker: the relay publishes again each time the row comes due, doubling the wait (a long backlog
    is not flooded into the stream again and again)."""
    ch, stub = stub_for(messaging, certs)
    async with ch:
        sent = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "backlog")]),  # type: ignore[attr-defined]
                                  metadata=principal_md(706))
    mid = sent.messages[0].message_id
    waits = []
    for expected_count in (1, 2, 3):
        await messaging.pool.execute(
            "UPDATE outbox_batches SET available_time = now() - interval '1 second'"
            " WHERE $1::uuid = ANY(message_ids)", mid)

        async def republished(n: int = expected_count) -> bool:
            row = await messaging.pool.fetchrow(
                "SELECT publish_count FROM outbox_batches WHERE $1::uuid = ANY(message_ids)", mid)
            return row is not None and row["publish_count"] >= n

        await eventually(republished, what=f"republication {expected_count}")
        waits.append(await messaging.pool.fetchval(
            "SELECT extract(epoch FROM available_time - now()) FROM outbox_batches"
            " WHERE $1::uuid = ANY(message_ids)", mid))
    # redeliver_seconds is 1.0 in these tests: the second and third waits are about 2 and 4 seconds.
    assert waits[1] > 1.5 and waits[2] > 3.5 and waits[2] > waits[1]
