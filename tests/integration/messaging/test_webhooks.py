"""Customer webhooks for receipts and replies: configured through the API (secret shown once), delivered by
the worker to a local HTTPS receiver, signed the Standard Webhooks way (checked with the spec's own
`standardwebhooks` library), retried with backoff under one webhook-id, logged; private and loopback
destinations refused outside test setups."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import AsyncIterator

import clicksend
import grpc
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from services.messaging.domain.settings import WEBHOOK_SECRET_RECORD, SettingsUpdate
from svckit.envelope import aad_for
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.fakes import WebhookReceiver
from tests.integration.messaging.test_api import REAL_NUMBER, eventually, reason_of, sms, stub_for
from tests.support import CertBundle


@pytest.fixture
async def receiver(certs: CertBundle) -> AsyncIterator[WebhookReceiver]:
    r = await WebhookReceiver(certs).start()
    yield r
    await r.stop()


async def test_receipts_and_replies_reach_the_webhook_signed(messaging: Messaging, certs: CertBundle,
                                                             receiver: WebhookReceiver) -> None:
    await messaging.start_worker()
    md = principal_md(9301, test_mode=True)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        upd = await stub.UpdateMessagingSettings(pb.UpdateMessagingSettingsRequest(  # type: ignore[attr-defined]
            receipt_webhook_url=receiver.url("/receipts"), inbound_webhook_url=receiver.url("/replies")), metadata=md)
        secret = upd.webhook_secret
        assert upd.webhook_secret.startswith("whsec_") and upd.settings.webhook_secret_set
        got = await stub.GetMessagingSettings(pb.GetMessagingSettingsRequest(), metadata=md)  # type: ignore[attr-defined]
        assert got.settings.receipt_webhook_url == receiver.url("/receipts")
        again = await stub.UpdateMessagingSettings(pb.UpdateMessagingSettingsRequest(  # type: ignore[attr-defined]
            receipt_webhook_url=receiver.url("/receipts")), metadata=md)
        assert again.webhook_secret == ""  # shown once

        sent = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "hi", custom_string="c-1")]),  # type: ignore[attr-defined]
                                  metadata=md)
        mid = sent.messages[0].message_id
        await stub.CreateTestInboundSms(pb.CreateTestInboundSmsRequest(  # type: ignore[attr-defined]
            url="poll", original_message_id=mid, body="Yes please"), metadata=md)

        async def both() -> bool:
            return {h.path for h in receiver.hits} == {"/receipts", "/replies"}

        await eventually(both, what="both webhooks")
        for hit in receiver.hits:
            assert Webhook(secret).verify(hit.body, hit.headers) == hit.json()
            assert hit.headers["Content-Type"] == "application/json"
            assert "X-SendSafe-Signature" not in hit.headers  # one scheme only
        receipt = next(h for h in receiver.hits if h.path == "/receipts")
        assert receipt.headers["X-SendSafe-Event"] == "sms.receipt"
        assert clicksend.SmsReceipt.from_dict(receipt.json()).status_code == 201
        assert receipt.json()["message_id"] == mid and receipt.json()["custom_string"] == "c-1"
        reply = next(h for h in receiver.hits if h.path == "/replies").json()
        assert clicksend.InboundSms.from_dict(reply).body == "Yes please"
        assert (reply["from"], reply["original_message_id"], reply["original_body"]) == (REAL_NUMBER, mid, "hi")

        async def logged() -> bool:  # the log row is written once the receiver's answer is back
            got = await stub.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(), metadata=md)  # type: ignore[attr-defined]
            return len(got.deliveries) == 2

        await eventually(logged, what="both deliveries in the log")
        log = await stub.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(), metadata=md)  # type: ignore[attr-defined]
        assert sorted(d.event for d in log.deliveries) == ["sms.inbound", "sms.receipt"]
        assert {(d.outcome, d.http_status, d.host) for d in log.deliveries} == {("DELIVERED", 200, "localhost")}

        rotated = await stub.RotateWebhookSecret(pb.RotateWebhookSecretRequest(), metadata=md)  # type: ignore[attr-defined]
        assert rotated.webhook_secret.startswith("whsec_") and rotated.webhook_secret != secret
        await stub.CreateTestSmsReceipt(pb.CreateTestSmsReceiptRequest(url=receiver.url("/one-off")), metadata=md)  # type: ignore[attr-defined]

        async def one_off() -> bool:
            return any(h.path == "/one-off" for h in receiver.hits)

        await eventually(one_off, what="the test receipt pushed to its URL")
        hit = next(h for h in receiver.hits if h.path == "/one-off")
        assert Webhook(rotated.webhook_secret).verify(hit.body, hit.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(hit.body, hit.headers)


async def test_failing_webhooks_are_retried_with_backoff_then_given_up(messaging: Messaging, certs: CertBundle,
                                                                       receiver: WebhookReceiver) -> None:
    await messaging.start_worker(webhook_max_attempts=4)
    receiver.statuses = [500, 503]  # then 200
    md = principal_md(9302, test_mode=True)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        await stub.UpdateMessagingSettings(pb.UpdateMessagingSettingsRequest(  # type: ignore[attr-defined]
            receipt_webhook_url=receiver.url()), metadata=md)
        # Two real deliveries: their receipts go to the account's webhook.
        await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "a"), sms(REAL_NUMBER, "b")]), metadata=md)  # type: ignore[attr-defined]

        async def outcomes() -> list[str]:
            log = await stub.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(), metadata=md)  # type: ignore[attr-defined]
            return [d.outcome for d in reversed(log.deliveries)]

        async def settled() -> bool:
            return (await outcomes()).count("DELIVERED") == 2

        await eventually(settled, what="both receipts delivered after the failures")
        assert sorted(await outcomes()) == ["DELIVERED", "DELIVERED", "RETRYING", "RETRYING"]
        # Retries repeat their webhook-id (the receiver's idempotency key): four posts, two ids.
        ids = Counter(h.headers["webhook-id"] for h in receiver.hits)
        assert len(receiver.hits) == 4 and len(ids) == 2 and set(ids.values()) == {2}
        assert await messaging.pool.fetchval("SELECT count(*) FROM webhook_outbox") == 0

        receiver.statuses = [500] * 10
        await stub.CreateTestSmsReceipt(pb.CreateTestSmsReceiptRequest(url=receiver.url("/test")), metadata=md)  # type: ignore[attr-defined]

        async def abandoned() -> bool:
            return "ABANDONED" in await outcomes()

        await eventually(abandoned, what="the webhook to be given up after its attempts")
        log = (await stub.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(limit=3), metadata=md)).deliveries  # type: ignore[attr-defined]
        assert [d.attempt for d in log] == [4, 3, 2] and log[0].outcome == "ABANDONED"
        assert all(d.http_status == 500 for d in log)
        # The delivery log never holds the payload.
        rows = await messaging.pool.fetch("SELECT t.* FROM webhook_deliveries t")
        assert all("status_code" not in str(tuple(r.values())) for r in rows)


async def test_private_and_loopback_destinations_are_refused_in_production(messaging: Messaging,
                                                                          certs: CertBundle) -> None:
    # With loopback allowed only in tests, production settings refuse such URLs when they are configured.
    from services.messaging.service.common import MessagingOptions

    prod = messaging.service
    prod._opts = MessagingOptions()  # production defaults (a test-only peek at the option)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        for url in ("https://localhost:8443/x", "https://localhost/x", "https://10.0.0.8/x",
                    "https://169.254.169.254/latest", "https://[64:ff9b::a00:1]/x", "http://hooks.example.com/x"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.UpdateMessagingSettings(pb.UpdateMessagingSettingsRequest(  # type: ignore[attr-defined]
                    inbound_webhook_url=url), metadata=principal_md(9303))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(err.value) == "INVALID_WEBHOOK_URL"
        ok = await stub.UpdateMessagingSettings(pb.UpdateMessagingSettingsRequest(  # type: ignore[attr-defined]
            inbound_webhook_url="https://93.184.216.34/sendsafe", body_retention_days=30),
            metadata=principal_md(9303))
        assert ok.settings.inbound_webhook_url == "https://93.184.216.34/sendsafe"
        assert ok.settings.body_retention_days == 30


async def test_a_secret_issued_before_standard_webhooks_signs_with_the_key_it_encodes(
        messaging: Messaging, certs: CertBundle, receiver: WebhookReceiver) -> None:
    # Secrets used to be "whsec_" + URL-safe base64 without padding; the stored ones are not re-issued:
    # the key is the bytes they encode, which the libraries take in the standard alphabet.
    await messaging.start_worker()
    account = 9304
    md = principal_md(account, test_mode=True)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        await stub.UpdateMessagingSettings(pb.UpdateMessagingSettingsRequest(  # type: ignore[attr-defined]
            receipt_webhook_url=receiver.url("/r")), metadata=md)
        raw = bytes(range(200, 232))
        legacy = "whsec_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
        blob = await messaging.envelope.encrypt(
            account, aad_for(account, WEBHOOK_SECRET_RECORD, str(account)), legacy.encode())
        await messaging.store.update_settings(account, SettingsUpdate(), blob)
        await stub.CreateTestSmsReceipt(pb.CreateTestSmsReceiptRequest(url=receiver.url("/r")), metadata=md)  # type: ignore[attr-defined]

        async def hit() -> bool:
            return bool(receiver.hits)

        await eventually(hit, what="the receipt")
        (got,) = receiver.hits
        assert Webhook("whsec_" + base64.b64encode(raw).decode()).verify(got.body, got.headers)
