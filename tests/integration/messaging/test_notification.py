"""Notifications are sends (issue 12): verified destinations, alert SMS sent as the rule's owner, and a
real audit service and messaging together over mTLS (an alert never feeds on its own SMS). Real
PostgreSQL, Redis, keys and audit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import grpc
import pytest

from sendsafe.audit.v1 import alert_pb2, audit_service_pb2, audit_service_pb2_grpc
from sendsafe.context.v1 import principal_pb2
from sendsafe.messaging.v1 import messaging_service_pb2 as mpb
from sendsafe.messaging.v1 import notification_service_pb2 as npb
from sendsafe.messaging.v1 import notification_service_pb2_grpc
from services.messaging.domain import BODY_RECORD
from svckit.app import App
from svckit.envelope import aad_for
from svckit.testing import CertBundle, NewDatabase
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.test_api import REAL_NUMBER, TEST_NUMBER, reason_of, sms, stub_for

SMS, EMAIL = npb.NOTIFICATION_CHANNEL_SMS, npb.NOTIFICATION_CHANNEL_EMAIL


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return result


async def body_of(m: Messaging, account: int, message_id: str) -> str:
    """What the carrier is handed (the handset's view): the stored ciphertext, decrypted."""
    ct = await m.pool.fetchval("SELECT body_ct FROM messages WHERE id = $1::uuid", message_id)
    mid = message_id.upper()  # message ids as the service writes them
    return (await m.envelope.decrypt(account, aad_for(account, BODY_RECORD, mid), bytes(ct))).decode()


async def verify(m: Messaging, stub: Any, account: int, number: str, **who: Any) -> npb.NotificationDestination:
    """Verify `number` for `account` the way a customer does: start, read the code off the handset, enter it."""
    md = principal_md(account, "sms.send", "sms.read", **who)
    started = await stub.StartDestinationVerification(
        npb.StartDestinationVerificationRequest(channel=SMS, to=number), metadata=md)
    mid = await m.pool.fetchval(
        "SELECT id::text FROM messages WHERE account_id = $1 AND cause = 'destination_verification'"
        " ORDER BY create_time DESC LIMIT 1", account)
    text = await body_of(m, account, mid)
    assert text.startswith("SendSafe verification code: ") and len(text) == len("SendSafe verification code: ") + 6
    done = await stub.VerifyDestination(npb.VerifyDestinationRequest(
        destination_id=started.destination.destination_id, code=text[-6:]), metadata=md)
    assert done.destination.verified
    return done.destination


async def test_destinations_are_verified_by_a_code_sent_as_the_customer(messaging: Messaging, certs: CertBundle,
                                                                        audit_app: App) -> None:
    account = 4111
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as ch:
        stub = notification_service_pb2_grpc.NotificationServiceStub(ch)
        md = principal_md(account, "sms.send", "sms.read")
        started = await stub.StartDestinationVerification(
            npb.StartDestinationVerificationRequest(channel=SMS, to=REAL_NUMBER), metadata=md)
        dest = started.destination
        assert not dest.verified and dest.to == "+61******678"
        assert started.expire_time.seconds - int(time.time()) in range(595, 602)
        # The code went out as the customer's own send (their user, charged), and its text never shows in
        # history: whoever reads the account's history must not be able to verify a number they don't hold.
        row = await messaging.pool.fetchrow(
            "SELECT id::text, user_id, price FROM messages WHERE account_id = $1"
            " AND cause = 'destination_verification'", account)
        assert row["user_id"] == 7 and row["price"] > 0
        _, sms_stub = stub_for(messaging, certs)
        history = await sms_stub.ListSmsHistory(mpb.ListSmsHistoryRequest(), metadata=md)  # type: ignore[attr-defined]
        assert [h.body for h in history.data] == [""]
        code = (await body_of(messaging, account, row["id"]))[-6:]
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        for bad in (wrong, "\uff11\uff12\uff13\uff14\uff15\uff16"):  # full-width digits are no code
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.VerifyDestination(npb.VerifyDestinationRequest(
                    destination_id=dest.destination_id, code=bad), metadata=md)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(info.value) == "DESTINATION_CODE_INVALID"
        # Another account cannot enter it.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.VerifyDestination(npb.VerifyDestinationRequest(
                destination_id=dest.destination_id, code=code), metadata=principal_md(4112, "sms.send"))
        assert reason_of(info.value) == "DESTINATION_NOT_FOUND"
        done = await stub.VerifyDestination(npb.VerifyDestinationRequest(
            destination_id=dest.destination_id, code=code), metadata=md)
        assert done.destination.verified
        listed = await stub.ListDestinations(npb.ListDestinationsRequest(), metadata=md)
        assert [(d.to, d.verified) for d in listed.destinations] == [("+61******678", True)]

        # Attempts are limited: after five wrong codes even the right one is refused.
        other = (await stub.StartDestinationVerification(
            npb.StartDestinationVerificationRequest(channel=SMS, to=TEST_NUMBER), metadata=md)).destination
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.VerifyDestination(npb.VerifyDestinationRequest(
                    destination_id=other.destination_id, code="000000"), metadata=md)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.VerifyDestination(npb.VerifyDestinationRequest(
                destination_id=other.destination_id, code="000000"), metadata=md)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason_of(info.value) == "DESTINATION_ATTEMPTS_EXCEEDED"
        # Codes expire (10 minutes).
        await messaging.pool.execute(
            "UPDATE notification_destinations SET code_expire_time = now() - interval '1 second', attempts = 0"
            " WHERE id = $1::uuid", other.destination_id)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.VerifyDestination(npb.VerifyDestinationRequest(
                destination_id=other.destination_id, code="000000"), metadata=md)
        assert reason_of(info.value) == "DESTINATION_CODE_EXPIRED"
        # Codes are rate-limited per account: five an hour (two were sent above).
        for _ in range(3):
            await stub.StartDestinationVerification(
                npb.StartDestinationVerificationRequest(channel=SMS, to=TEST_NUMBER), metadata=md)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.StartDestinationVerification(
                npb.StartDestinationVerificationRequest(channel=SMS, to=TEST_NUMBER), metadata=md)
        assert reason_of(info.value) == "DESTINATION_CODES_EXCEEDED"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.StartDestinationVerification(
                npb.StartDestinationVerificationRequest(channel=EMAIL, to="ops@example.com"), metadata=md)
        assert reason_of(info.value) == "CHANNEL_NOT_AVAILABLE"

    # Evidence of every code sent and of the verification, never the number.
    async with channel_as(certs, "gateway", audit_app.port, "audit") as ach:
        audit_stub = audit_service_pb2_grpc.AuditServiceStub(ach)

        async def evidence() -> list[Any]:
            got = await audit_stub.ListEvents(audit_service_pb2.ListEventsRequest(
                action="messaging.notification_destination.*"), metadata=principal_md(account, "audit.read"))
            events = list(got.events)
            return events if sum(e.action.endswith(".verified") for e in events) == 1 and len(events) == 6 else []

        events = await until(evidence, what="the destination events")
        assert {e.resource.id for e in events if e.action.endswith(".verified")} == {dest.destination_id}
        assert not any(REAL_NUMBER[1:] in str(e) or TEST_NUMBER[1:] in str(e) for e in events)


async def test_audit_sends_an_alert_sms_as_the_rule_owner(messaging: Messaging, certs: CertBundle) -> None:
    account = 4101
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as gw, \
            channel_as(certs, "audit", messaging.api.port, "messaging") as ch:
        stub = notification_service_pb2_grpc.NotificationServiceStub(ch)
        owner = npb.NotificationOwner(user_id=9, api_username="bob", api_key_id="key-9")

        def alert(to: str = REAL_NUMBER, channel: int = SMS, **limits: Any) -> npb.SendNotificationRequest:
            o = npb.NotificationOwner()
            o.CopyFrom(owner)
            if limits:
                o.send_limits.CopyFrom(principal_pb2.SendLimits(**limits))
            return npb.SendNotificationRequest(account_id=account, channel=channel, to=to, body="SendSafe alert: x",
                                               notification_id="n1", owner=o)

        with pytest.raises(grpc.aio.AioRpcError) as info:  # not verified yet
            await stub.SendNotification(alert())
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(info.value) == "DESTINATION_NOT_VERIFIED"
        assert not (await stub.CheckDestination(npb.CheckDestinationRequest(
            account_id=account, channel=SMS, to=REAL_NUMBER))).verified

        await verify(messaging, notification_service_pb2_grpc.NotificationServiceStub(gw), account, REAL_NUMBER)
        assert (await stub.CheckDestination(npb.CheckDestinationRequest(
            account_id=account, channel=SMS, to=REAL_NUMBER))).verified
        sent = await stub.SendNotification(alert())
        row = await messaging.pool.fetchrow(
            "SELECT account_id, user_id, api_username, price, cause FROM messages WHERE id = $1::uuid", sent.message_id)
        assert (row["account_id"], row["user_id"], row["api_username"], row["cause"]) == (
            account, 9, "bob", "alert_delivery")
        assert row["price"] > 0  # charged like the owner's own send

        # The owner's key limits hold: a key allowed only NZ numbers cannot be used to reach an AU one.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendNotification(alert(allowed_countries=["NZ"]))
        assert reason_of(info.value) == "NOTIFICATION_REJECTED"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendNotification(alert("ops@example.com", EMAIL))
        assert reason_of(info.value) == "CHANNEL_NOT_AVAILABLE"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendNotification(alert("not a number"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(info.value) == "NOTIFICATION_REJECTED"


async def test_only_audit_may_send_notifications(messaging: Messaging, certs: CertBundle) -> None:
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as ch:
        stub = notification_service_pb2_grpc.NotificationServiceStub(ch)
        for call, request in ((stub.SendNotification, npb.SendNotificationRequest(
                account_id=4101, channel=SMS, to=TEST_NUMBER, body="x")),
                (stub.CheckDestination, npb.CheckDestinationRequest(account_id=4101, channel=SMS, to=TEST_NUMBER))):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(request)  # type: ignore[operator]
            assert reason_of(info.value) == "CALLER_NOT_ALLOWED"


async def test_an_alert_on_sent_sms_does_not_feed_on_its_own_sms(
    messaging: Messaging, certs: CertBundle, new_database: NewDatabase
) -> None:
    """Real audit (alert engine, deliveries) + real messaging API and worker, over mTLS both ways."""
    from services.audit.app import build
    from services.audit.config import Settings

    tls = certs.tls("audit")
    audit = await build(Settings(
        tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca, database_url=await new_database("audit_n"),
        messaging_addr=f"127.0.0.1:{messaging.api.port}", poll_seconds=0.1, retry_base_seconds=0.05,
        checkpoint_min_interval_seconds=0, verify_interval_seconds=0))
    worker = await messaging.start_worker(audit_addr=f"127.0.0.1:{audit.port}")
    account = 4121
    try:
        async with channel_as(certs, "gateway", messaging.api.port, "messaging") as gw, \
                channel_as(certs, "gateway", audit.port, "audit") as ach:
            notif = notification_service_pb2_grpc.NotificationServiceStub(gw)
            audit_stub = audit_service_pb2_grpc.AuditServiceStub(ach)
            await verify(messaging, notif, account, REAL_NUMBER)
            pool = audit.extras["pool"]

            async def sent_events() -> list[Any]:
                got = await audit_stub.ListEvents(audit_service_pb2.ListEventsRequest(
                    action="messaging.sms.sent", page_size=100), metadata=principal_md(account, "audit.read"))
                return list(got.events)

            async def caught_up() -> bool:
                size = await pool.fetchval("SELECT size FROM tree_head")
                return bool(await pool.fetchval("SELECT sequence FROM processor_cursors WHERE name = 'alerts'") >= size)

            await until(sent_events, what="the verification SMS's delivery event")
            await until(caught_up, what="the alert engine")
            md = principal_md(account, "audit.manage", "audit.read", "sms.send", user_id=31, api_key_id="key-31")
            rule = (await audit_stub.CreateAlertRule(audit_service_pb2.CreateAlertRuleRequest(rule=alert_pb2.AlertRule(
                name="every send", actions=["messaging.sms.sent"], sms_to=REAL_NUMBER)), metadata=md)).rule
            balance = await messaging.pool.fetchval("SELECT balance FROM balances WHERE account_id = $1", account)

            _, sms_stub = stub_for(messaging, certs)
            await sms_stub.SendSms(mpb.SendSmsRequest(messages=[sms(REAL_NUMBER, "hello")]),  # type: ignore[attr-defined]
                                   metadata=principal_md(account, "sms.send"))

            async def alert_sent() -> Any:
                return await messaging.pool.fetchrow(
                    "SELECT id::text, user_id, price, status FROM messages WHERE account_id = $1"
                    " AND cause = 'alert_delivery' AND status IN ('SENT', 'DELIVERED')", account)

            alert_row = await until(alert_sent, what="the alert SMS to go out")
            # Its own delivery event reaches the log (marked with its cause), and the engine has seen it.
            await until(lambda: _has_cause(sent_events), what="the alert SMS's delivery event")
            await until(caught_up, what="the alert engine")
            alerts = (await audit_stub.ListAlerts(audit_service_pb2.ListAlertsRequest(page_size=100),
                                                  metadata=principal_md(account, "audit.read"))).alerts
            assert [a.rule_id for a in alerts] == [rule.rule_id]  # one alert: for "hello", not for itself
            assert await messaging.pool.fetchval(
                "SELECT count(*) FROM messages WHERE account_id = $1 AND cause = 'alert_delivery'", account) == 1
            assert alert_row["user_id"] == 31 and alert_row["price"] > 0
            text = await body_of(messaging, account, alert_row["id"])
            when = datetime.now(UTC).strftime("%Y-%m-%d")
            assert text.startswith(f"SendSafe alert: rule {rule.rule_id} matched 1 event(s) (messaging.sms.sent) at "
                                   f"{when} ") and "every send" not in text
            after = await messaging.pool.fetchval("SELECT balance FROM balances WHERE account_id = $1", account)
            assert Decimal(balance) - Decimal(after) == 2 * alert_row["price"]  # "hello" and the alert, charged
    finally:
        await worker.stop()
        await audit.stop()


async def _has_cause(events: Callable[[], Awaitable[list[Any]]]) -> bool:
    return any(e.cause == "alert_delivery" for e in await events())
