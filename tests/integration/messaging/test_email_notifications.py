"""Email notifications end to end (issue 14): messaging over real mTLS with real identity, keys, audit,
PostgreSQL and Redis, sending through a real SMTP server (aiosmtpd, STARTTLS required, AUTH) - email
destinations verified by a code sent by email, alert emails to them as the rule's owner, security
notifications to the account's owners, failures as retryable or final errors, evidence without addresses; and
through the real audit service, alert deliveries over email retried, delivered, or visibly failed."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from sendsafe.audit.v1 import alert_pb2, audit_service_pb2, audit_service_pb2_grpc
from sendsafe.messaging.v1 import notification_service_pb2 as npb
from sendsafe.messaging.v1 import notification_service_pb2_grpc
from services.messaging.config import Settings
from svckit.app import App
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.smtp_server import Inbox, Received, smtp_server
from tests.integration.messaging.test_api import reason_of
from tests.integration.messaging.test_notification import Owner, new_owner, until
from tests.support import CertBundle, NewDatabase

SMS, EMAIL = npb.NOTIFICATION_CHANNEL_SMS, npb.NOTIFICATION_CHANNEL_EMAIL
SMTP_USER, SMTP_PASSWORD = "sendsafe-relay", "relay-Secret-0f-the-smtp-login"
SENDER = "alerts@sendsafe.example"


@pytest.fixture
async def inbox(certs: CertBundle) -> AsyncIterator[Inbox]:
    async with smtp_server(certs.https_cert, certs.https_key, credentials=(SMTP_USER, SMTP_PASSWORD)) as box:
        yield box


def smtp_settings(base: Settings, certs: CertBundle, port: int) -> Settings:
    return dataclasses.replace(base, smtp_host="127.0.0.1", smtp_port=port, smtp_tls="starttls",
                               smtp_ca_file=str(certs.public_ca), smtp_username=SMTP_USER,
                               smtp_password=SMTP_PASSWORD, smtp_from=SENDER, smtp_timeout_seconds=2.0)


@pytest.fixture
async def emailing(messaging_settings: Settings, certs: CertBundle, inbox: Inbox) -> AsyncIterator[App]:
    """A messaging API whose email goes to `inbox`."""
    from services.messaging.app import build

    app = await build(smtp_settings(messaging_settings, certs, inbox.port))
    yield app
    await app.stop()


async def verify_email(app: App, certs: CertBundle, inbox: Inbox, owner: Owner, address: str) -> Received:
    """Verify `address` as the customer does: start, read the code off the email, enter it."""
    async with channel_as(certs, "gateway", app.port, "messaging") as gw:
        stub = notification_service_pb2_grpc.NotificationServiceStub(gw)
        md = principal_md(owner.account_id, "sms.send", user_id=owner.user_id, api_username=owner.api_username)
        before = len(inbox.received)
        started = await stub.StartDestinationVerification(
            npb.StartDestinationVerificationRequest(channel=EMAIL, to=address), metadata=md)
        assert len(inbox.received) == before + 1
        mail = inbox.received[-1]
        code = re.fullmatch(r"SendSafe verification code: (\d{6})", mail.message.get_content().splitlines()[0])
        assert code is not None
        done = await stub.VerifyDestination(npb.VerifyDestinationRequest(
            destination_id=started.destination.destination_id, code=code.group(1)), metadata=md)
        assert done.destination.verified
        return mail


async def email_events(audit_app: App, certs: CertBundle, account: int, n: int) -> list[Any]:
    async with channel_as(certs, "gateway", audit_app.port, "audit") as ach:
        stub = audit_service_pb2_grpc.AuditServiceStub(ach)

        async def got() -> list[Any]:
            page = await stub.ListEvents(audit_service_pb2.ListEventsRequest(
                action="messaging.notification.*", page_size=100), metadata=principal_md(account, "audit.read"))
            events = [e for e in page.events if e.action == "messaging.notification.email"]
            return events if len(events) >= n else []

        return await until(got, what=f"{n} email events")


async def test_email_destinations_are_verified_by_a_code_sent_by_email_then_alerted(
    emailing: App, inbox: Inbox, certs: CertBundle, identity_app: App, audit_app: App
) -> None:
    owner = await new_owner(certs, identity_app)
    account = owner.account_id
    async with channel_as(certs, "gateway", emailing.port, "messaging") as gw, \
            channel_as(certs, "audit", emailing.port, "messaging") as ch:
        customer = notification_service_pb2_grpc.NotificationServiceStub(gw)
        stub = notification_service_pb2_grpc.NotificationServiceStub(ch)
        md = principal_md(account, "sms.send", user_id=owner.user_id, api_username=owner.api_username)
        for bad in ("not an address", "ops@localhost", "ops@exa mple.com", "ops@example.com\r\nBcc: x@evil.test"):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await customer.StartDestinationVerification(
                    npb.StartDestinationVerificationRequest(channel=EMAIL, to=bad), metadata=md)
            assert reason_of(info.value) == "DESTINATION_INVALID", bad
        assert inbox.received == []

        def alert(to: str = "ops@example.com") -> npb.SendNotificationRequest:
            return npb.SendNotificationRequest(
                account_id=account, channel=EMAIL, to=to, subject="SendSafe alert", notification_id="alert-delivery-1",
                body="SendSafe alert: rule 3 matched 1 event(s) (gateway.login) at 2026-12-04 10:00 UTC.",
                owner=owner.proto())

        with pytest.raises(grpc.aio.AioRpcError) as info:  # not verified yet
            await stub.SendNotification(alert())
        assert reason_of(info.value) == "DESTINATION_NOT_VERIFIED"
        assert not (await stub.CheckDestination(npb.CheckDestinationRequest(
            account_id=account, channel=EMAIL, to="ops@example.com"))).verified

        code_mail = await verify_email(emailing, certs, inbox, owner, "Ops@Example.COM")
        assert code_mail.rcpt_tos == ["ops@example.com"]  # one address, lowercased
        assert code_mail.message["Subject"] == "SendSafe verification code"
        listed = await customer.ListDestinations(npb.ListDestinationsRequest(), metadata=md)
        assert [(d.channel, d.to, d.verified) for d in listed.destinations] == [(EMAIL, "o***@example.com", True)]
        for spelled in ("ops@example.com", " OPS@example.com "):
            assert (await stub.CheckDestination(npb.CheckDestinationRequest(
                account_id=account, channel=EMAIL, to=spelled))).verified
        # The verified address is not a verified number, nor the other way round.
        assert not (await stub.CheckDestination(npb.CheckDestinationRequest(
            account_id=account, channel=SMS, to="ops@example.com"))).verified

        sent = await stub.SendNotification(alert("OPS@example.com"))
        mail = inbox.received[-1]
        assert mail.rcpt_tos == ["ops@example.com"] and sent.message_id == mail.message["Message-ID"]
        assert mail.tls in ("TLSv1.2", "TLSv1.3") and mail.login == SMTP_USER
        msg = mail.message
        assert (msg["From"], msg["To"], msg["Subject"]) == (f"SendSafe <{SENDER}>", "ops@example.com", "SendSafe alert")
        assert msg["Date"] and msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
        assert msg.get_content().startswith("SendSafe alert: rule 3 matched 1 event(s)")
        with pytest.raises(grpc.aio.AioRpcError) as info:  # another account's verification counts for nothing
            await stub.SendNotification(npb.SendNotificationRequest(
                account_id=account + 1, channel=EMAIL, to="ops@example.com", body="x", owner=owner.proto()))
        assert reason_of(info.value) == "DESTINATION_NOT_VERIFIED"

    # No secret in any mail: the code only in its own mail, never the SMTP password or the owner's API key.
    code = code_mail.message.get_content().splitlines()[0][-6:]
    assert [code in r.data.decode() for r in inbox.received] == [True, False]
    assert not any(SMTP_PASSWORD in r.data.decode() or owner.key_id in r.data.decode() for r in inbox.received)
    # Evidence of both emails: the address masked, each marked with what caused it (no alert rule matches it).
    events = await email_events(audit_app, certs, account, 2)
    assert sorted((e.details["kind"], e.details["to"], e.cause) for e in events) == [
        ("alert", "o***@example.com", "alert_delivery"),
        ("verification", "o***@example.com", "destination_verification")]
    assert not any("ops@example.com" in str(e) or code in str(e) for e in events)


async def test_security_notifications_go_to_the_account_owners(
    emailing: App, inbox: Inbox, certs: CertBundle, identity_app: App, audit_app: App
) -> None:
    """account_owners: to the main user's address identity holds (no verification, no owner), with the
    caller's (audit's) fixed subject and body and nothing of the account's."""
    owner = await new_owner(certs, identity_app)
    main_address = f"main{owner.api_username}@example.com"
    async with channel_as(certs, "audit", emailing.port, "messaging") as ch:
        stub = notification_service_pb2_grpc.NotificationServiceStub(ch)

        def notice(account: int = owner.account_id, **kw: Any) -> npb.SendNotificationRequest:
            args: dict[str, Any] = dict(account_id=account, channel=EMAIL, account_owners=True,
                                        subject="SendSafe security: a new API key was created",
                                        body="A new API key was created for your SendSafe account.",
                                        notification_id="security-notice-41")
            args.update(kw)
            return npb.SendNotificationRequest(**args)

        sent = await stub.SendNotification(notice())
        [mail] = inbox.received
        assert mail.rcpt_tos == [main_address] and mail.message["To"] == main_address
        assert mail.message["Subject"] == "SendSafe security: a new API key was created"
        assert mail.message.get_content().strip() == "A new API key was created for your SendSafe account."
        assert sent.message_id == mail.message["Message-ID"]
        assert owner.api_username not in mail.message["Message-ID"]

        for bad, reason in ((notice(subject="Alert\r\nBcc: attacker@evil.test"), "EMAIL_CONTENT_INVALID"),
                            (notice(body=""), "EMAIL_CONTENT_INVALID"),
                            (notice(channel=SMS), "CHANNEL_NOT_AVAILABLE"),
                            (notice(account=10**12), "NO_ACCOUNT_OWNERS")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SendNotification(bad)
            assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
            assert reason_of(info.value) == reason
        assert len(inbox.received) == 1  # nothing else went out

        # The server refusing for now is retryable; for good is final; both recorded.
        inbox.rcpt_reply = "451 4.7.1 greylisted, try again later"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendNotification(notice())
        assert (info.value.code(), reason_of(info.value)) == (grpc.StatusCode.UNAVAILABLE, "EMAIL_UNAVAILABLE")
        inbox.rcpt_reply = "550 5.1.1 mailbox unavailable"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendNotification(notice())
        assert (info.value.code(), reason_of(info.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "EMAIL_REJECTED")
        assert main_address not in (info.value.details() or "")
    events = await email_events(audit_app, certs, owner.account_id, 3)
    assert sorted((e.details["kind"], e.cause, e.error_reason) for e in events) == [
        ("account_owners", "security_notification", ""),
        ("account_owners", "security_notification", "EMAIL_REJECTED"),
        ("account_owners", "security_notification", "EMAIL_UNAVAILABLE")]
    assert not any(main_address in str(e) for e in events)


async def test_an_unreachable_mail_server_is_unavailable_and_email_unconfigured_is_not_available(
    messaging: Messaging, messaging_settings: Settings, certs: CertBundle, identity_app: App
) -> None:
    from services.messaging.app import build

    owner = await new_owner(certs, identity_app)
    request = npb.SendNotificationRequest(account_id=owner.account_id, channel=EMAIL, account_owners=True,
                                          subject="s", body="b")
    async with channel_as(certs, "audit", messaging.api.port, "messaging") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await notification_service_pb2_grpc.NotificationServiceStub(ch).SendNotification(request)
        assert reason_of(info.value) == "CHANNEL_NOT_AVAILABLE"
    async with smtp_server(certs.https_cert, certs.https_key) as gone:
        port = gone.port
    app = await build(smtp_settings(messaging_settings, certs, port))  # nothing listens there any more
    try:
        async with channel_as(certs, "audit", app.port, "messaging") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await notification_service_pb2_grpc.NotificationServiceStub(ch).SendNotification(request)
            assert (info.value.code(), reason_of(info.value)) == (grpc.StatusCode.UNAVAILABLE, "EMAIL_UNAVAILABLE")
    finally:
        await app.stop()


async def test_alert_emails_through_the_real_audit_service_retry_deliver_and_fail_visibly(
    emailing: App, inbox: Inbox, certs: CertBundle, identity_app: App, new_database: NewDatabase
) -> None:
    """Audit's alert engine delivers over email through this messaging: a 451 is retried until the server
    takes it (DELIVERED after several attempts), a 550 fails at once, and a server that is gone fails after
    audit's last attempt - each visible to the account in its alert history."""
    from services.audit.app import build
    from services.audit.config import Settings as AuditSettings

    owner = await new_owner(certs, identity_app)
    account = owner.account_id
    await verify_email(emailing, certs, inbox, owner, "ops@example.com")
    tls = certs.tls("audit")
    audit = await build(AuditSettings(
        tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca, database_url=await new_database("audit_e"),
        messaging_addr=f"127.0.0.1:{emailing.port}", poll_seconds=0.1, retry_base_seconds=0.05,
        checkpoint_min_interval_seconds=0, verify_interval_seconds=0))
    try:
        async with channel_as(certs, "gateway", audit.port, "audit") as ach, \
                channel_as(certs, "gateway", audit.port, "audit") as gw_append:
            stub = audit_service_pb2_grpc.AuditServiceStub(ach)
            md = principal_md(account, "audit.manage", "audit.read", "sms.send", user_id=owner.user_id,
                              api_username=owner.api_username, api_key_id=owner.key_id)
            await stub.CreateAlertRule(audit_service_pb2.CreateAlertRuleRequest(rule=alert_pb2.AlertRule(
                name="pings", actions=["test.email.ping"], email_to="ops@example.com")), metadata=md)
            appender = audit_service_pb2_grpc.AuditServiceStub(gw_append)

            async def fire() -> None:
                from tests.integration.audit.conftest import event

                await appender.AppendEvents(audit_service_pb2.AppendEventsRequest(
                    events=[event(account, "test.email.ping")]))

            async def email_delivery(index: int, *done: int) -> Any:
                alerts = (await stub.ListAlerts(audit_service_pb2.ListAlertsRequest(page_size=100),
                                                metadata=principal_md(account, "audit.read"))).alerts
                ordered = sorted(alerts, key=lambda a: a.alert_id)
                if len(ordered) <= index:
                    return None
                [d] = [d for d in ordered[index].deliveries if d.channel == "email"]
                return d if not done or d.status in done else None

            delivered_before = len(inbox.received)
            inbox.rcpt_reply = "451 4.3.0 try again later"
            await fire()
            await until(lambda: _retrying(email_delivery), what="an email delivery retried after 4xx")
            inbox.rcpt_reply = ""
            first = await until(lambda: email_delivery(0, alert_pb2.DELIVERY_STATUS_DELIVERED), what="delivered")
            assert first.attempts >= 2 and first.target != "ops@example.com"
            assert len(inbox.received) == delivered_before + 1

            inbox.rcpt_reply = "550 5.1.1 no such mailbox"
            await fire()
            rejected = await until(lambda: email_delivery(1, alert_pb2.DELIVERY_STATUS_FAILED), what="rejected")
            assert (rejected.attempts, rejected.last_error) == (1, "EMAIL_REJECTED")

            await inbox.stop()  # the mail server is gone: connections refused until audit gives up
            await fire()
            gave_up = await until(lambda: email_delivery(2, alert_pb2.DELIVERY_STATUS_FAILED), what="given up")
            assert (gave_up.attempts, gave_up.last_error) == (8, "EMAIL_UNAVAILABLE")
            assert len(inbox.received) == delivered_before + 1
    finally:
        await audit.stop()


async def _retrying(email_delivery: Any) -> bool:
    d = await email_delivery(0)
    return bool(d is not None and d.attempts >= 2 and d.status == alert_pb2.DELIVERY_STATUS_PENDING
                and d.last_error == "EMAIL_UNAVAILABLE")
