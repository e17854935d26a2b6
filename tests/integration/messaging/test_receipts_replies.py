"""Receipts, replies and opt-outs, cancelling, history search and idempotency keys through the messaging
API over real mTLS, PostgreSQL, Redis, keys and audit, with a worker and the carrier simulator."""

from __future__ import annotations

import time
from decimal import Decimal

import grpc
import pytest

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.senders_support import approve_tag
from tests.integration.messaging.test_api import REAL_NUMBER, TEST_NUMBER, eventually, reason_of, sms, stub_for
from tests.support import CertBundle


async def _status(m: Messaging, mid: str) -> str:
    return str(await m.pool.fetchval("SELECT status FROM messages WHERE id = $1::uuid", mid))


async def test_every_final_state_leaves_one_receipt_to_poll_and_mark_read(messaging: Messaging,
                                                                          certs: CertBundle) -> None:
    await messaging.start_worker()
    md = principal_md(9101)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        sent = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "r1", custom_string="cs-1")]),  # type: ignore[attr-defined]
                                  metadata=md)
        mid = sent.messages[0].message_id

        async def receipt_listed() -> bool:
            page = await stub.ListSmsReceipts(pb.ListSmsReceiptsRequest(), metadata=md)  # type: ignore[attr-defined]
            return any(r.message_id == mid for r in page.data)

        await eventually(receipt_listed, what="the delivery receipt")
        one = await stub.GetSmsReceipt(pb.GetSmsReceiptRequest(message_id=mid), metadata=md)  # type: ignore[attr-defined]
        r = one.receipt
        assert (r.status_code, r.custom_string, r.message_type, r.subaccount_id) == (201, "cs-1", "sms", 7)
        assert not r.HasField("error_code") and r.timestamp >= r.timestamp_send > 0
        assert await messaging.pool.fetchval("SELECT count(*) FROM receipts WHERE message_id = $1::uuid", mid) == 1

        await stub.MarkSmsReceiptsRead(pb.MarkSmsReceiptsReadRequest(date_before=int(time.time()) + 5), metadata=md)  # type: ignore[attr-defined]
        assert (await stub.ListSmsReceipts(pb.ListSmsReceiptsRequest(), metadata=md)).total == 0  # type: ignore[attr-defined]
        again = await stub.GetSmsReceipt(pb.GetSmsReceiptRequest(message_id=mid), metadata=md)  # type: ignore[attr-defined]
        assert again.receipt.message_id == mid  # read receipts stay readable one by one

        for missing in ("0E2C7F57-5E1B-4C36-9E0A-4F1B7E0C9A11", "not-an-id"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetSmsReceipt(pb.GetSmsReceiptRequest(message_id=missing), metadata=md)  # type: ignore[attr-defined]
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as other:  # another account's receipt does not exist for you
            await stub.GetSmsReceipt(pb.GetSmsReceiptRequest(message_id=mid), metadata=principal_md(9102))  # type: ignore[attr-defined]
        assert other.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_message_no_carrier_accepted_fails_with_a_receipt_and_is_refunded(messaging: Messaging,
                                                                                   certs: CertBundle) -> None:
    await messaging.start_worker(sim_failure_rate=1.0, max_attempts=2)
    md = principal_md(9103)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        sent = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "doomed")]), metadata=md)  # type: ignore[attr-defined]
        mid = sent.messages[0].message_id
        assert sent.total_price == pytest.approx(0.077)  # charged when accepted

        async def failed() -> bool:
            return await _status(messaging, mid) == "FAILED"

        await eventually(failed, what="the message to fail")
        r = (await stub.GetSmsReceipt(pb.GetSmsReceiptRequest(message_id=mid), metadata=md)).receipt  # type: ignore[attr-defined]
        assert r.status_code == 301 and r.error_code == 7 and r.error_text == "Unknown failure"
        assert await messaging.service.get_balance(9103) == Decimal("10")


async def test_test_hooks_are_for_test_mode_accounts_only(messaging: Messaging, certs: CertBundle) -> None:
    ch, stub = stub_for(messaging, certs)
    async with ch:
        for call, req in ((stub.CreateTestSmsReceipt, pb.CreateTestSmsReceiptRequest(url="poll")),  # type: ignore[attr-defined]
                          (stub.CreateTestInboundSms, pb.CreateTestInboundSmsRequest(url="poll"))):  # type: ignore[attr-defined]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(req, metadata=principal_md(9104))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and reason_of(err.value) == "TEST_MODE_ONLY"
        md = principal_md(9104, test_mode=True)
        r = (await stub.CreateTestSmsReceipt(pb.CreateTestSmsReceiptRequest(url="poll"), metadata=md)).receipt  # type: ignore[attr-defined]
        assert r.status_code == 201 and r.message_id
        listed = await stub.ListSmsReceipts(pb.ListSmsReceiptsRequest(), metadata=md)  # type: ignore[attr-defined]
        assert [x.message_id for x in listed.data] == [r.message_id]
        i = (await stub.CreateTestInboundSms(pb.CreateTestInboundSmsRequest(url="poll"), metadata=md)).inbound  # type: ignore[attr-defined]
        assert i.body == "This is a test inbound message." and i.sender == "+61411111111" and i.keyword == "This"
        with pytest.raises(grpc.aio.AioRpcError) as bad_url:
            await stub.CreateTestSmsReceipt(pb.CreateTestSmsReceiptRequest(url="http://example.com/x"), metadata=md)  # type: ignore[attr-defined]
        assert reason_of(bad_url.value) == "INVALID_WEBHOOK_URL"


async def test_stop_opts_the_sender_out_and_start_opts_them_back_in(messaging: Messaging, certs: CertBundle) -> None:
    md = principal_md(9105, test_mode=True)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        sent = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "Reply STOP to opt out",  # type: ignore[attr-defined]
                                                                  custom_string="camp-1")]), metadata=md)
        mid = sent.messages[0].message_id
        reply = (await stub.CreateTestInboundSms(pb.CreateTestInboundSmsRequest(  # type: ignore[attr-defined]
            url="poll", original_message_id=mid, body="Stop."), metadata=md)).inbound
        assert (reply.sender, reply.original_message_id, reply.original_body, reply.custom_string, reply.keyword) == (
            REAL_NUMBER, mid, "Reply STOP to opt out", "camp-1", "Stop.")

        got = (await stub.GetInboundSms(pb.GetInboundSmsRequest(original_message_id=mid), metadata=md)).inbound  # type: ignore[attr-defined]
        assert got.message_id == reply.message_id and got.body == "Stop."
        page = await stub.ListInboundSms(pb.ListInboundSmsRequest(), metadata=md)  # type: ignore[attr-defined]
        assert [x.message_id for x in page.data] == [reply.message_id]

        blocked = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "again"), sms(TEST_NUMBER, "ok")]),  # type: ignore[attr-defined]
                                     metadata=md)
        assert [m.status for m in blocked.messages] == ["RECIPIENT_OPTED_OUT", "SUCCESS"]
        assert blocked.messages[0].message_id == "" and blocked.blocked_count == 1
        price = await stub.PriceSms(pb.PriceSmsRequest(messages=[{"to": REAL_NUMBER, "body": "x"}]), metadata=md)  # type: ignore[attr-defined]
        assert price.messages[0].status == "RECIPIENT_OPTED_OUT"
        # Only a keyed hash is stored, never the number.
        raw = await messaging.pool.fetch("SELECT t.* FROM opt_outs t")
        assert len(raw) == 1 and REAL_NUMBER.encode() not in bytes(raw[0]["number_hash"])
        assert REAL_NUMBER not in str([tuple(r.values()) for r in
                                       await messaging.pool.fetch("SELECT t.* FROM inbound_messages t")])

        assert (await stub.MarkInboundSmsReadById(pb.MarkInboundSmsReadByIdRequest(message_id=reply.message_id),  # type: ignore[attr-defined]
                                                  metadata=md)).count == 1
        assert (await stub.MarkInboundSmsReadById(pb.MarkInboundSmsReadByIdRequest(message_id=reply.message_id),  # type: ignore[attr-defined]
                                                  metadata=md)).count == 0
        assert (await stub.ListInboundSms(pb.ListInboundSmsRequest(), metadata=md)).total == 0  # type: ignore[attr-defined]

        await stub.CreateTestInboundSms(pb.CreateTestInboundSmsRequest(  # type: ignore[attr-defined]
            url="poll", original_message_id=mid, body="START"), metadata=md)
        back = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "welcome back")]), metadata=md)  # type: ignore[attr-defined]
        assert back.messages[0].status == "SUCCESS"
        await stub.MarkInboundSmsRead(pb.MarkInboundSmsReadRequest(), metadata=md)  # type: ignore[attr-defined]
        assert (await stub.ListInboundSms(pb.ListInboundSmsRequest(), metadata=md)).total == 0  # type: ignore[attr-defined]

        with pytest.raises(grpc.aio.AioRpcError) as none:
            await stub.GetInboundSms(pb.GetInboundSmsRequest(original_message_id=back.messages[0].message_id),  # type: ignore[attr-defined]
                                     metadata=md)
        assert none.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cancel_until_dispatch_with_refunds(messaging: Messaging, certs: CertBundle) -> None:
    await messaging.start_worker()
    md = principal_md(9106)
    later = int(time.time()) + 3600
    ch, stub = stub_for(messaging, certs)
    async with ch:
        sent = await stub.SendSms(pb.SendSmsRequest(messages=[  # type: ignore[attr-defined]
            sms(REAL_NUMBER, "a", schedule=later, custom_string="camp"),
            sms(REAL_NUMBER, "b", schedule=later, custom_string="camp"),
            sms(REAL_NUMBER, "c", schedule=later, custom_string="other"),
            sms(REAL_NUMBER, "d"),
        ]), metadata=md)
        a, b, c, d = (m.message_id for m in sent.messages)
        assert await messaging.service.get_balance(9106) == Decimal("10") - 4 * Decimal("0.077")
        # The custom strings are sealed: cancelling by one below matches its keyed hash, not stored text.
        assert await messaging.pool.fetchval(
            "SELECT count(*) FROM messages m WHERE account_id = 9106 AND (m::text LIKE '%camp%'"
            " OR m::text LIKE '%other%' OR custom_ct IS NULL AND id <> $1::uuid)", d) == 0

        await stub.CancelSms(pb.CancelSmsRequest(message_id=a), metadata=md)  # type: ignore[attr-defined]
        await stub.CancelSms(pb.CancelSmsRequest(message_id=a), metadata=md)  # again: still fine  # type: ignore[attr-defined]
        assert await _status(messaging, a) == "CANCELLED"
        assert await messaging.service.get_balance(9106) == Decimal("10") - 3 * Decimal("0.077")

        n = await stub.CancelAllSms(pb.CancelAllSmsRequest(custom_string="camp"), metadata=md)  # type: ignore[attr-defined]
        assert n.count == 1 and await _status(messaging, b) == "CANCELLED"
        assert await _status(messaging, c) == "SCHEDULED"
        assert (await stub.CancelAllSms(pb.CancelAllSmsRequest(), metadata=md)).count == 1  # type: ignore[attr-defined]
        assert await messaging.service.get_balance(9106) == Decimal("10") - Decimal("0.077")

        async def delivered() -> bool:
            return await _status(messaging, d) == "DELIVERED"

        await eventually(delivered, what="the unscheduled message to be delivered")
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.CancelSms(pb.CancelSmsRequest(message_id=d), metadata=md)  # type: ignore[attr-defined]
        assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(late.value) == "MESSAGE_NOT_CANCELLABLE"
        for missing in ("0E2C7F57-5E1B-4C36-9E0A-4F1B7E0C9A11", "xyz"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CancelSms(pb.CancelSmsRequest(message_id=missing), metadata=md)  # type: ignore[attr-defined]
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as foreign:
            await stub.CancelSms(pb.CancelSmsRequest(message_id=c), metadata=principal_md(9107))  # type: ignore[attr-defined]
        assert foreign.value.code() == grpc.StatusCode.NOT_FOUND
        history = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(q="status:cancelled"), metadata=md)  # type: ignore[attr-defined]
        assert {h.message_id for h in history.data} == {a, b, c}
        assert {(h.status, h.status_code) for h in history.data} == {("Cancelled", "301")}


async def test_history_search_and_sort(messaging: Messaging, certs: CertBundle) -> None:
    md = principal_md(9108)
    await approve_tag(messaging.pool, 9108, "Acme")
    ch, stub = stub_for(messaging, certs)
    async with ch:
        await stub.SendSms(pb.SendSmsRequest(messages=[  # type: ignore[attr-defined]
            sms("+61412345601", "Zebra crossing", sender="Acme", custom_string="x"),
            sms("+61412345602", "apple pie", custom_string="y"),
            sms("+61412345603", "Mango apple", sender="Acme"),
        ]), metadata=md)

        async def query(**kw: object) -> list[str]:
            page = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(**kw), metadata=md)  # type: ignore[attr-defined]
            return [h.body for h in page.data]

        assert await query(q="to:+61 412 345 602") == ["apple pie"]
        assert await query(q="from:Acme", order_by="date:asc") == ["Zebra crossing", "Mango apple"]
        assert await query(q="body:APPLE", order_by="body:asc") == ["apple pie", "Mango apple"]
        assert await query(order_by="to:desc") == ["Mango apple", "apple pie", "Zebra crossing"]
        assert await query(q="custom_string:y") == ["apple pie"]
        assert await query(q="status:Queued,country:AU", order_by="body:desc") == [
            "Zebra crossing", "Mango apple", "apple pie"]
        hidden = principal_md(9108, deidentified=True)
        page = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(), metadata=hidden)  # type: ignore[attr-defined]
        assert {h.body for h in page.data} == {""} and {h.to for h in page.data} == {
            "+61******601", "+61******602", "+61******603"}
        for kw in ({"q": "to:+61412345602"}, {"q": "body:apple"}, {"order_by": "body:asc"}):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListSmsHistory(pb.ListSmsHistoryRequest(**kw), metadata=hidden)  # type: ignore[attr-defined]
            assert reason_of(err.value) == "SEARCH_NOT_PERMITTED"
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.ListSmsHistory(pb.ListSmsHistoryRequest(q="price:1"), metadata=md)  # type: ignore[attr-defined]
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(bad.value) == "INVALID_QUERY"


async def test_an_idempotency_key_makes_a_retry_harmless(messaging: Messaging, certs: CertBundle) -> None:
    ch, stub = stub_for(messaging, certs)
    async with ch:
        req = pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "once"), sms(REAL_NUMBER, "twice?")])  # type: ignore[attr-defined]
        first = await stub.SendSms(req, metadata=principal_md(9109, idempotency_key="order-77"))  # type: ignore[attr-defined]
        again = await stub.SendSms(req, metadata=principal_md(9109, idempotency_key="order-77"))  # type: ignore[attr-defined]
        assert [m.message_id for m in again.messages] == [m.message_id for m in first.messages]
        assert again == first
        assert await messaging.pool.fetchval("SELECT count(*) FROM messages WHERE account_id = 9109") == 2
        assert await messaging.service.get_balance(9109) == Decimal("10") - 2 * Decimal("0.077")
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "other")]),  # type: ignore[attr-defined]
                               metadata=principal_md(9109, idempotency_key="order-77"))
        assert reason_of(reused.value) == "IDEMPOTENCY_KEY_REUSED"
        stored = await messaging.pool.fetchval("SELECT result_ct FROM idempotency_keys WHERE account_id = 9109")
        assert b"once" not in bytes(stored) and REAL_NUMBER.encode() not in bytes(stored)
