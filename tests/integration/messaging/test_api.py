"""The messaging API and worker in-process over real mTLS, PostgreSQL, Redis, audit and keys."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import cast

import asyncpg
import grpc
import pytest

from sendsafe.audit.v1 import event_pb2
from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from sendsafe.messaging.v1 import messaging_service_pb2_grpc, sms_pb2
from services.messaging.domain.records import BODY_RECORD, TO_RECORD
from svckit.app import App
from svckit.envelope import DecryptFailed, aad_for
from svckit.rpcstatus import error_reason as reason_of
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.support import CertBundle

REAL_NUMBER = "+61412345678"  # a valid Australian mobile number (not a ClickSend test number)
TEST_NUMBER = "+61411111111"




def stub_for(m: Messaging, certs: CertBundle, caller: str = "gateway") -> tuple[grpc.aio.Channel, object]:
    ch = channel_as(certs, caller, m.api.port, "messaging")
    return ch, messaging_service_pb2_grpc.MessagingServiceStub(ch)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "condition") -> None:
    """Wait on observable state (polling), failing after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def count_rows(m: Messaging, table: str) -> int:
    return int(await m.pool.fetchval(f"SELECT count(*) FROM {table}"))


def sms(to: str, body: str, **kw: object) -> sms_pb2.OutboundSms:
    return sms_pb2.OutboundSms(to=to, body=body, **kw)  # type: ignore[arg-type]


async def test_send_stores_only_ciphertext_and_the_worker_delivers(
    messaging: Messaging, certs: CertBundle, audit_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = f"secret body {uuid.uuid4().hex}"
    ch, stub = stub_for(messaging, certs)
    async with ch:
        resp = await stub.SendSms(  # type: ignore[attr-defined]
            pb.SendSmsRequest(messages=[sms(REAL_NUMBER, marker, custom_string="c1"), sms(TEST_NUMBER, marker + "!")]),
            metadata=principal_md(501),
        )
        assert (resp.total_count, resp.queued_count, resp.blocked_count) == (2, 2, 0)
        assert resp.currency.currency_name_short == "AUD"
        first, second = resp.messages
        assert first.status == "SUCCESS" and first.message_id == first.message_id.upper()
        assert uuid.UUID(first.message_id)
        assert first.message_price == "0.0770" and first.message_parts == 1 and first.to == REAL_NUMBER
        assert first.country == "AU" and first.is_shared_system_number and first.custom_string == "c1"
        assert first.direction == "out" and first.date > 0 and first.user_id == 501 and first.subaccount_id == 7
        assert second.message_price == "0.0000"  # ClickSend test number: accepted, not charged
        assert resp.total_price == pytest.approx(0.077)

        # At rest: no plaintext body or number anywhere in the rows.
        rows = await messaging.pool.fetch("SELECT * FROM messages")
        dump = b"".join(repr(tuple(r.values())).encode() + b"".join(
            bytes(v) for v in r.values() if isinstance(v, (bytes, bytearray, memoryview))) for r in rows)
        for secret in (marker, REAL_NUMBER, TEST_NUMBER, REAL_NUMBER.lstrip("+"), "412345678"):
            assert secret.encode() not in dump
        row = await messaging.pool.fetchrow("SELECT body_ct, to_ct FROM messages WHERE id = $1",
                                            uuid.UUID(first.message_id))
        env = messaging.envelope
        mid = first.message_id
        assert await env.decrypt(501, aad_for(501, BODY_RECORD, mid), bytes(row["body_ct"])) == marker.encode()
        assert await env.decrypt(501, aad_for(501, TO_RECORD, mid), bytes(row["to_ct"])) == REAL_NUMBER.encode()
        with pytest.raises(DecryptFailed):  # another account cannot read it
            await env.decrypt(502, aad_for(502, BODY_RECORD, mid), bytes(row["body_ct"]))
        with pytest.raises(DecryptFailed):  # nor can it be moved to another record
            await env.decrypt(501, aad_for(501, BODY_RECORD, second.message_id), bytes(row["body_ct"]))
        with pytest.raises(DecryptFailed):  # nor read as another record type
            await env.decrypt(501, aad_for(501, TO_RECORD, mid), bytes(row["body_ct"]))

        await messaging.start_worker()

        async def delivered() -> bool:
            page = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(), metadata=principal_md(501))  # type: ignore[attr-defined]
            return len(page.data) == 2 and all(h.status_code == "201" for h in page.data)

        await eventually(delivered, what="both messages delivered")
        page = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(), metadata=principal_md(501))  # type: ignore[attr-defined]
        assert [h.message_id for h in page.data] == [second.message_id, first.message_id]  # newest first
        h = page.data[1]
        assert h.body == marker and h.to == REAL_NUMBER and h.status == "Sent" and h.status_code == "201"
        assert h.status_text == "Success: Message received on handset." and not h.HasField("error_code")
        assert h.message_price == "0.0770" and h.api_username == "alice" and h.custom_string == "c1"
        assert h.carrier == "simulator"
        assert (page.total, page.per_page, page.current_page, page.last_page) == (2, 15, 1, 1)
        assert (page.first_index, page.last_index) == (1, 2) and not page.HasField("next_page_url")
        # Another account sees none of it.
        other = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(), metadata=principal_md(502))  # type: ignore[attr-defined]
        assert other.total == 0 and len(other.data) == 0

    sim = await messaging.pool.fetch("SELECT message_id, submit_count FROM carrier_sim_submissions")
    assert sorted(str(r["message_id"]).upper() for r in sim) == sorted([first.message_id, second.message_id])
    assert all(r["submit_count"] == 1 for r in sim)
    assert await count_rows(messaging, "outbox") == 0

    async def outbox_cleared() -> bool:  # the relay drops the send's batch once it comes due, all settled
        return await count_rows(messaging, "outbox_batches") == 0

    await eventually(outbox_cleared, what="the settled outbox batch to be deleted")

    # The worker audited the batch: counts, never content.
    audit_service = audit_app.extras["service"]

    async def audited() -> list[event_pb2.Event]:
        rows = await audit_service._store.chain_rows(0, 1_000_000)  # type: ignore[attr-defined]
        events = [event_pb2.Event.FromString(r[1]) for r in rows]
        return [e for e in events if e.action == "messaging.sms.sent" and e.actor.account_id == 501]

    async def has_audit() -> bool:
        return bool(await audited())

    await eventually(has_audit, what="the delivery audit event")
    (event,) = await audited()
    assert dict(event.details) == {"sent": "2", "retried": "0", "failed": "0", "carrier": "simulator"}
    # Nothing that was logged or audited holds the body or the number.
    for text in (caplog.text, str(event)):
        for secret in (marker, REAL_NUMBER, TEST_NUMBER):
            assert secret not in text

    # Balance is the identity service's to read: trial 10 - 0.077.
    async with channel_as(certs, "identity", messaging.api.port, "messaging") as ich:
        istub = messaging_service_pb2_grpc.MessagingServiceStub(ich)
        bal = await istub.GetBalance(pb.GetBalanceRequest(account_id=501))
        assert bal.balance == "9.923000" and bal.currency.currency_name_short == "AUD"


@pytest.mark.parametrize(("count", "reason"), [(1001, "TOO_MANY_RECIPIENTS"), (0, "MISSING_REQUIRED_FIELDS")])
async def test_whole_request_rejections_store_nothing(
    messaging: Messaging, certs: CertBundle, count: int, reason: str
) -> None:
    ch, stub = stub_for(messaging, certs)
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "x")] * count),  # type: ignore[attr-defined]
                               metadata=principal_md(601))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(info.value) == reason
    assert await count_rows(messaging, "messages") == 0
    assert await count_rows(messaging, "outbox") == 0
    assert await count_rows(messaging, "outbox_batches") == 0
    assert await count_rows(messaging, "balances") == 0


async def test_thousand_messages_are_accepted(messaging: Messaging, certs: CertBundle) -> None:
    ch, stub = stub_for(messaging, certs)
    async with ch:
        resp = await stub.SendSms(pb.SendSmsRequest(messages=[sms(TEST_NUMBER, f"m{i}") for i in range(1000)]),  # type: ignore[attr-defined]
                                  metadata=principal_md(602))
    assert resp.queued_count == 1000
    assert await count_rows(messaging, "messages") == 1000


async def test_per_message_rejections_are_reported_and_not_stored(messaging: Messaging, certs: CertBundle) -> None:
    ch, stub = stub_for(messaging, certs)
    now = int(time.time())
    async with ch:
        resp = await stub.SendSms(pb.SendSmsRequest(messages=[  # type: ignore[attr-defined]
            sms("+6100", "nope"),
            sms(REAL_NUMBER, "   "),
            sms(REAL_NUMBER, "x", schedule=now - 3600),
            sms(REAL_NUMBER, "x", sender="not a valid sender id!"),
            sms(REAL_NUMBER, "x" * 1300),
            sms(REAL_NUMBER, "fine"),
        ]), metadata=principal_md(603))
    assert [m.status for m in resp.messages] == [
        "INVALID_RECIPIENT", "EMPTY_MESSAGE", "INVALID_SCHEDULE", "INVALID_SENDER_ID", "MESSAGE_TOO_LONG", "SUCCESS"]
    assert (resp.queued_count, resp.blocked_count, resp.total_count) == (1, 5, 6)
    assert all(not m.message_id for m in resp.messages[:5])
    ids = [str(r["id"]).upper() for r in await messaging.pool.fetch("SELECT id FROM messages")]
    assert ids == [resp.messages[5].message_id]


async def test_credit_is_never_overdrawn(messaging_settings, certs: CertBundle) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from services.messaging.app import build

    app = await build(dataclasses.replace(messaging_settings, trial_credit="0.200000"))
    try:
        async with channel_as(certs, "gateway", app.port, "messaging") as ch:
            stub = messaging_service_pb2_grpc.MessagingServiceStub(ch)
            resp = await stub.SendSms(pb.SendSmsRequest(messages=[
                sms(REAL_NUMBER, "a"), sms(REAL_NUMBER, "b" * 200), sms(REAL_NUMBER, "c"), sms(REAL_NUMBER, "d"),
                sms(TEST_NUMBER, "free"),
            ]), metadata=principal_md(604))
            # 0.077 fits; 2 parts (0.154) does not; 0.077 fits; the next does not; test numbers are free.
            assert [m.status for m in resp.messages] == [
                "SUCCESS", "INSUFFICIENT_CREDIT", "SUCCESS", "INSUFFICIENT_CREDIT", "SUCCESS"]
            # A test-mode account is never charged.
            free = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "t")] * 5),
                                      metadata=principal_md(604, test_mode=True))
            assert free.queued_count == 5 and free.total_price == 0
        pool = cast(asyncpg.Pool, app.extras["pool"])
        assert await pool.fetchval("SELECT balance FROM balances WHERE account_id = 604") == Decimal("0.046")
        assert await pool.fetchval("SELECT count(*) FROM messages") == 8
    finally:
        await app.stop()


async def test_permission_is_checked_by_the_kit(messaging: Messaging, certs: CertBundle) -> None:
    ch, stub = stub_for(messaging, certs)
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "x")]),  # type: ignore[attr-defined]
                               metadata=principal_md(605, "sms.read"))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    ch, stub = stub_for(messaging, certs, caller="identity")
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "x")]),  # type: ignore[attr-defined]
                               metadata=principal_md(605))
        assert reason_of(info.value) == "CALLER_NOT_ALLOWED"
    assert await count_rows(messaging, "messages") == 0


async def test_history_pages_and_filters(messaging: Messaging, certs: CertBundle) -> None:
    ch, stub = stub_for(messaging, certs)
    async with ch:
        for i in range(20):
            await stub.SendSms(pb.SendSmsRequest(messages=[sms(TEST_NUMBER, f"n{i}")]),  # type: ignore[attr-defined]
                               metadata=principal_md(606))
        p1 = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(), metadata=principal_md(606))  # type: ignore[attr-defined]
        assert [h.body for h in p1.data] == [f"n{i}" for i in range(19, 4, -1)]
        assert (p1.total, p1.last_page, p1.first_index, p1.last_index) == (20, 2, 1, 15)
        assert p1.next_page_url and not p1.HasField("prev_page_url")
        p2 = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(page=2), metadata=principal_md(606))  # type: ignore[attr-defined]
        assert [h.body for h in p2.data] == [f"n{i}" for i in range(4, -1, -1)]
        assert (p2.first_index, p2.last_index) == (16, 20) and p2.prev_page_url
        p3 = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(page=3), metadata=principal_md(606))  # type: ignore[attr-defined]
        assert len(p3.data) == 0 and not p3.HasField("first_index")
        future = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(date_from=int(time.time()) + 3600),  # type: ignore[attr-defined]
                                           metadata=principal_md(606))
        assert future.total == 0
        past = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(date_to=int(time.time()) - 3600),  # type: ignore[attr-defined]
                                         metadata=principal_md(606))
        assert past.total == 0
        for bad in (pb.ListSmsHistoryRequest(limit=10), pb.ListSmsHistoryRequest(limit=101),
                    pb.ListSmsHistoryRequest(page=-1)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListSmsHistory(bad, metadata=principal_md(606))  # type: ignore[attr-defined]
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(info.value) == "INVALID_PAGING"
