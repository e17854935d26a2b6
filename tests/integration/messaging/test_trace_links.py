"""Issue 16: a message's receipt, its webhook and its retries stay joined to the trace of the send that
accepted it. The send's traceparent is stored with the message row; the outbox relay republishes a retry with
it (the worker's delivery continues or links to the send's trace instead of starting an unrelated one), the
receipt's span links to it, and the receipt webhook's delivery span links to it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.fakes import WebhookReceiver
from tests.integration.messaging.test_api import eventually, sms, stub_for
from tests.support import CertBundle

N = 12  # messages in the send; at a 70% temporary failure rate some are certainly retried (0.3^12 they are not)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the servers started after this fixture (request it before `messaging`)."""
    from svckit.telemetry import setup_tracing

    exporter = InMemorySpanExporter()
    setup_tracing("messaging", [SimpleSpanProcessor(exporter)])
    yield exporter
    exporter.shutdown()


def _joined(s: ReadableSpan, trace_id: int) -> bool:
    """The span is in the send's trace or links to it."""
    return s.context.trace_id == trace_id or any(link.context.trace_id == trace_id for link in s.links)


def _attr(s: ReadableSpan, name: str) -> object:
    return (s.attributes or {}).get(name)


def _links_to(s: ReadableSpan, trace_id: int) -> bool:
    return any(link.context.trace_id == trace_id for link in s.links)


async def test_receipts_webhooks_and_retries_link_to_the_send_trace(
    spans: InMemorySpanExporter, messaging: Messaging, certs: CertBundle
) -> None:
    receiver = await WebhookReceiver(certs).start()
    try:
        await messaging.start_worker(sim_failure_rate=0.7, max_attempts=40)
        md = principal_md(9401, test_mode=True)
        traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        ch, stub = stub_for(messaging, certs)
        async with ch:
            await stub.UpdateMessagingSettings(pb.UpdateMessagingSettingsRequest(  # type: ignore[attr-defined]
                receipt_webhook_url=receiver.url("/receipts")), metadata=md)
            sent = await stub.SendSms(pb.SendSmsRequest(  # type: ignore[attr-defined]
                messages=[sms(f"+614123456{i:02d}", f"trace me {i}") for i in range(N)]),
                metadata=(*md, ("traceparent", traceparent)))
        ids = [m.message_id for m in sent.messages]
        assert len(ids) == N and all(ids)

        async def all_hooked() -> bool:
            return {h.json()["message_id"] for h in receiver.hits} >= set(ids)

        await eventually(all_hooked, timeout=60, what="a receipt webhook for every message")
        rows = await messaging.pool.fetch(
            "SELECT upper(id::text) AS id, traceparent, attempts, status FROM messages WHERE id = ANY($1::uuid[])",
            ids)
        # Stored with the row by the send's insert: the traceparent of the send as this service served it.
        stored = {r["traceparent"] for r in rows}
        assert len(stored) == 1 and None not in stored, stored
        _, trace_hex, span_hex, _ = stored.pop().split("-")
        trace_id = int(trace_hex, 16)
        assert any(s.context.span_id == int(span_hex, 16) and s.context.trace_id == trace_id
                   for s in spans.get_finished_spans())  # a span of the send this process served
        assert {r["status"] for r in rows} == {"DELIVERED"}
        assert any(r["attempts"] > 1 for r in rows), "no message was retried"

        def finished() -> list[ReadableSpan]:
            return list(spans.get_finished_spans())

        # Every delivery of these messages, the first ones and the relay's retries, is joined to the send.
        deliveries = [s for s in finished() if s.name == "dispatch.deliver"]
        assert len(deliveries) >= 2, len(deliveries)
        assert all(_joined(s, trace_id) for s in deliveries), [
            (format(s.context.trace_id, "032x"), len(s.links)) for s in deliveries]

        # The receipts that settled them (the carrier's reports, outside any trace) link to the send's trace.
        receipts = [s for s in finished() if s.name == "receipt.apply"
                    and set(ids) & set(_attr(s, "sendsafe.message_ids") or ())]  # type: ignore[call-overload]
        assert receipts and all(_links_to(s, trace_id) for s in receipts)
        assert all(s.context.trace_id != trace_id for s in receipts)  # linked, not part of the send's trace

        # Each receipt webhook's delivery span links to the send's trace.
        async def hook_spans() -> bool:
            done = {_attr(s, "sendsafe.message_id") for s in finished() if s.name == "webhook.deliver"}
            return done >= set(ids)

        await eventually(hook_spans, what="a webhook.deliver span per message")
        hooks = [s for s in finished()
                 if s.name == "webhook.deliver" and _attr(s, "sendsafe.message_id") in ids]
        assert hooks and all(_links_to(s, trace_id) for s in hooks)
    finally:
        await receiver.stop()
