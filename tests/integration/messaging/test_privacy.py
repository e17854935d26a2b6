"""Privacy controls: body retention (bodies redacted, numbers de-identified to their country, metadata kept),
staff see content only when the customer grants it, and no body or phone number ever reaches a log record or a
span across the whole messaging path (send, search, deliver, receipt, reply, webhook, idempotent replay)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.fakes import WebhookReceiver
from tests.integration.messaging.test_api import REAL_NUMBER, eventually, reason_of, sms, stub_for
from tests.support import CertBundle


async def _settled(m: Messaging, account_id: int) -> bool:
    return not await m.pool.fetchval(
        "SELECT count(*) FROM messages WHERE account_id = $1 AND status NOT IN ('DELIVERED', 'CANCELLED')",
        account_id)


async def test_retention_redacts_bodies_and_keeps_metadata(messaging: Messaging, certs: CertBundle) -> None:
    await messaging.start_worker()
    md = principal_md(9401, test_mode=True)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        await stub.UpdateMessagingSettings(pb.UpdateMessagingSettingsRequest(body_retention_days=7), metadata=md)  # type: ignore[attr-defined]
        sent = await stub.SendSms(pb.SendSmsRequest(messages=[  # type: ignore[attr-defined]
            sms(REAL_NUMBER, "old news", custom_string="keep-me"), sms(REAL_NUMBER, "fresh")]), metadata=md)
        old, fresh = (m.message_id for m in sent.messages)
        await eventually(lambda: _settled(messaging, 9401), what="both to be delivered")
        reply = (await stub.CreateTestInboundSms(pb.CreateTestInboundSmsRequest(  # type: ignore[attr-defined]
            url="poll", original_message_id=old, body="old reply"), metadata=md)).inbound
        scheduled = await stub.SendSms(pb.SendSmsRequest(messages=[  # type: ignore[attr-defined]
            sms(REAL_NUMBER, "not yet sent", schedule=int(time.time()) + 86_400)]), metadata=md)
        # Eight days pass for the first message, its reply and the scheduled one (which has not gone yet).
        aged = (("messages", [old, scheduled.messages[0].message_id]), ("inbound_messages", [reply.message_id]))
        for table, ids in aged:
            await messaging.pool.execute(
                f"UPDATE {table} SET create_time = now() - interval '8 days' WHERE id = ANY($1::uuid[])", ids)
        assert await messaging.service.redact_expired() == 2

        page = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(), metadata=md)  # type: ignore[attr-defined]
        by_id = {h.message_id: h for h in page.data}
        # Past retention the number is de-identified too: its country calling code alone stays.
        assert by_id[old].body == "" and by_id[old].to == "+61" and by_id[old].custom_string == "keep-me"
        assert (by_id[old].status, by_id[old].status_code) == ("Sent", "201")
        assert by_id[fresh].body == "fresh"
        assert by_id[scheduled.messages[0].message_id].body == "not yet sent"
        inbound = (await stub.ListInboundSms(pb.ListInboundSmsRequest(), metadata=md)).data  # type: ignore[attr-defined]
        assert [(i.body, i.original_body, i.sender) for i in inbound] == [("", "", "+61")]
        assert await messaging.pool.fetchval(
            "SELECT body_ct IS NULL AND to_ct IS NULL AND to_hash IS NULL AND country = 'AU' FROM messages"
            " WHERE id = $1::uuid", old)
        assert await messaging.pool.fetchval(
            "SELECT body_ct IS NULL AND from_ct IS NULL AND from_hash IS NULL FROM inbound_messages"
            " WHERE id = $1::uuid", reply.message_id)
        # The fresh message keeps its number, and its number still finds it.
        assert by_id[fresh].to == REAL_NUMBER
        found = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(q=f"to:{REAL_NUMBER}"), metadata=md)  # type: ignore[attr-defined]
        assert old not in {h.message_id for h in found.data} and fresh in {h.message_id for h in found.data}
        assert await messaging.service.redact_expired() == 0


async def test_staff_see_content_only_when_the_customer_grants_it(messaging: Messaging, certs: CertBundle) -> None:
    customer = principal_md(9402)
    staff = principal_md(1, "staff.accounts.read", staff=True, user_id=77, api_username="support.sam")
    ch, stub = stub_for(messaging, certs)
    async with ch:
        await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "private matter")]), metadata=customer)  # type: ignore[attr-defined]
        masked = await stub.StaffListSmsHistory(pb.StaffListSmsHistoryRequest(account_id=9402), metadata=staff)  # type: ignore[attr-defined]
        assert not masked.content_visible and masked.total == 1
        (m,) = masked.messages
        assert (m.body, m.to, m.status) == ("", "+61******678", "Queued")
        await stub.UpdateMessagingSettings(pb.UpdateMessagingSettingsRequest(staff_content_access=True),  # type: ignore[attr-defined]
                                           metadata=customer)
        shown = await stub.StaffListSmsHistory(pb.StaffListSmsHistoryRequest(account_id=9402), metadata=staff)  # type: ignore[attr-defined]
        assert shown.content_visible
        assert (shown.messages[0].body, shown.messages[0].to) == ("private matter", REAL_NUMBER)
        not_staff = principal_md(9402, "staff.accounts.read")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.StaffListSmsHistory(pb.StaffListSmsHistoryRequest(account_id=9402), metadata=not_staff)  # type: ignore[attr-defined]
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as no_perm:
            await stub.StaffListSmsHistory(pb.StaffListSmsHistoryRequest(account_id=9402),  # type: ignore[attr-defined]
                                           metadata=principal_md(1, "sms.read", staff=True))
        assert reason_of(no_perm.value) == "MISSING_PERMISSION"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the servers started after this fixture (request it before `messaging`)."""
    from svckit.telemetry import setup_tracing

    exporter = InMemorySpanExporter()
    setup_tracing("messaging", [SimpleSpanProcessor(exporter)])
    yield exporter
    exporter.shutdown()


async def test_no_body_or_number_in_logs_or_spans(spans: InMemorySpanExporter, messaging: Messaging,
                                                  certs: CertBundle, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = f"secret-body-{secrets.token_hex(6)}"
    reply_body = f"secret-reply-{secrets.token_hex(6)}"
    number = f"+6141{secrets.randbelow(10**7):07d}"  # 041x: always a valid AU mobile (not all of 04xx is)
    receiver = await WebhookReceiver(certs, statuses=[500]).start()  # the first webhook fails: a retry path too
    try:
        await messaging.start_worker()
        md = principal_md(9403, test_mode=True, idempotency_key="scan-1")
        ch, stub = stub_for(messaging, certs)
        async with ch:
            await stub.UpdateMessagingSettings(pb.UpdateMessagingSettingsRequest(  # type: ignore[attr-defined]
                receipt_webhook_url=receiver.url("/r"), inbound_webhook_url=receiver.url("/i")), metadata=md)
            req = pb.SendSmsRequest(messages=[sms(number, body), sms("+6100", body)])  # type: ignore[attr-defined]
            sent = await stub.SendSms(req, metadata=md)
            await stub.SendSms(req, metadata=md)  # replayed
            mid = sent.messages[0].message_id
            await stub.PriceSms(pb.PriceSmsRequest(messages=[{"to": number, "body": body}]), metadata=md)  # type: ignore[attr-defined]
            await stub.ListSmsHistory(pb.ListSmsHistoryRequest(q=f"to:{number},body:{body[:10]}"), metadata=md)  # type: ignore[attr-defined]
            await stub.CreateTestInboundSms(pb.CreateTestInboundSmsRequest(  # type: ignore[attr-defined]
                url="poll", original_message_id=mid, body=reply_body), metadata=md)
            await stub.ListInboundSms(pb.ListInboundSmsRequest(), metadata=md)  # type: ignore[attr-defined]
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.SendSms(pb.SendSmsRequest(messages=[sms(number, "other")]), metadata=md)  # reused key  # type: ignore[attr-defined]

            async def webhooks_done() -> bool:
                return {h.path for h in receiver.hits} >= {"/r", "/i"} and len(receiver.hits) >= 3

            await eventually(webhooks_done, what="the receipt and reply webhooks (after one failure)")
    finally:
        await receiver.stop()

    national = number[3:]
    secrets_ = (body, reply_body, number, national)
    records = [f"{r.getMessage()} {r.args!r} {getattr(r, 'exc_text', '')}" for r in caplog.records]
    assert records, "nothing was logged: the scan would prove nothing"
    for text in records:
        assert not any(s in text for s in secrets_), text
    finished = spans.get_finished_spans()
    assert any(s.name.endswith("SendSms") for s in finished), "no spans recorded: the scan would prove nothing"
    for s in finished:
        blob = f"{s.name} {dict(s.attributes or {})!r} {[(e.name, dict(e.attributes or {})) for e in s.events]!r}"
        assert not any(x in blob for x in secrets_), blob
