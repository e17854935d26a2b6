"""Notifications are sends (issue 12): verified destinations, alert SMS sent as the rule's owner (re-checked at
every delivery with identity and keys), and a real audit service and messaging together over mTLS (an alert
never feeds on its own SMS). Real PostgreSQL, Redis, keys, identity and audit."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import grpc
import pytest

from sendsafe.audit.v1 import alert_pb2, audit_service_pb2, audit_service_pb2_grpc, event_pb2
from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import identity_service_pb2 as ipb
from sendsafe.identity.v1 import identity_service_pb2_grpc, staff_service_pb2, staff_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2 as kpb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from sendsafe.messaging.v1 import messaging_service_pb2 as mpb
from sendsafe.messaging.v1 import notification_service_pb2 as npb
from sendsafe.messaging.v1 import notification_service_pb2_grpc
from services.keys.domain.api_key_format import parse_api_key
from services.messaging.domain.records import BODY_RECORD
from svckit.app import App
from svckit.envelope import aad_for
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.test_api import REAL_NUMBER, TEST_NUMBER, reason_of, sms, stub_for
from tests.support import CertBundle, NewDatabase, stepped_up_now

SMS, EMAIL = npb.NOTIFICATION_CHANNEL_SMS, npb.NOTIFICATION_CHANNEL_EMAIL
PASSWORD = "quartz meadow ladder 42 ripple"
Metadata = tuple[tuple[str, bytes], ...]


def _md(**principal: Any) -> Metadata:
    p = principal_pb2.Principal(request_id=uuid.uuid4().hex, client_address="203.0.113.9", **principal)
    return (("x-sendsafe-principal-bin", p.SerializeToString()),)


@dataclass
class Owner:
    """A real user of a real account (identity) with a real API key (keys): who an alert rule belongs to."""

    account_id: int
    user_id: int
    api_username: str
    key_id: str
    admin: Metadata  # the account's main user, through an API key, as the gateway forwards it

    def proto(self, **limits: Any) -> npb.NotificationOwner:
        return npb.NotificationOwner(user_id=self.user_id, api_username=self.api_username, api_key_id=self.key_id,
                                     send_limits=principal_pb2.SendLimits(**limits) if limits else None)


async def new_owner(certs: CertBundle, identity: App, account_id: int = 0, admin: Metadata = ()) -> Owner:
    """A sub-account holding access_sms, with its first API key, in a new account (or in `account_id`)."""
    name = f"owner{uuid.uuid4().hex[:10]}"
    async with channel_as(certs, "ops", identity.port, "identity") as ops, \
            channel_as(certs, "gateway", identity.port, "identity") as gw:
        if not account_id:
            made = await identity_service_pb2_grpc.IdentityServiceStub(ops).CreateAccount(ipb.CreateAccountRequest(
                account_name="Owners Pty Ltd", api_username=f"main{name}", email=f"main{name}@example.com",
                country="AU"))
            account_id = made.account_id
            admin = _md(account_id=account_id, user_id=made.user.user_id, api_username=made.user.api_username,
                        permissions=list(made.user.permissions), auth_method=principal_pb2.AUTH_METHOD_API_KEY,
                        api_key_id="main-key")
        sub = (await identity_service_pb2_grpc.IdentityServiceStub(gw).CreateSubaccount(ipb.CreateSubaccountRequest(
            api_username=name, password=PASSWORD, email=f"{name}@example.com", first_name="Al", last_name="Erts",
            access_sms=1), metadata=admin)).subaccount
    parts = parse_api_key(sub.api_key)
    assert parts is not None
    return Owner(account_id, sub.subaccount_id, sub.api_username, parts.key_id, admin)


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
        assert reason_of(info.value) == "CHANNEL_NOT_AVAILABLE"  # no MESSAGING_SMTP_HOST here (test_email_*)

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


async def test_audit_sends_an_alert_sms_as_the_rule_owner(messaging: Messaging, certs: CertBundle,
                                                            identity_app: App) -> None:
    owner = await new_owner(certs, identity_app)
    account = owner.account_id
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as gw, \
            channel_as(certs, "audit", messaging.api.port, "messaging") as ch:
        stub = notification_service_pb2_grpc.NotificationServiceStub(ch)

        def alert(to: str = REAL_NUMBER, channel: int = SMS, **limits: Any) -> npb.SendNotificationRequest:
            return npb.SendNotificationRequest(account_id=account, channel=channel, to=to, body="SendSafe alert: x",
                                               notification_id="n1", owner=owner.proto(**limits))

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
            account, owner.user_id, owner.api_username, "alert_delivery")
        assert row["price"] > 0  # charged like the owner's own send

        # The owner's key limits hold: a key allowed only NZ numbers cannot be used to reach an AU one.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendNotification(alert(allowed_countries=["NZ"]))
        assert reason_of(info.value) == "NOTIFICATION_REJECTED"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendNotification(alert("ops@example.com", EMAIL))
        assert reason_of(info.value) == "CHANNEL_NOT_AVAILABLE"  # email not configured in this messaging
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendNotification(alert("not a number"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(info.value) == "NOTIFICATION_REJECTED"


async def test_alert_sms_recheck_their_owner_at_delivery(
    messaging: Messaging, certs: CertBundle, identity_app: App, keys_addr: str, audit_app: App
) -> None:
    """The owner's rights are checked when each alert goes out, not only when the rule was set: an owner whose
    API key was revoked, whose access_sms was withdrawn, or whom staff disabled no longer gets alert SMS sent
    (charged to the account) in its name; nor does a notification that names no owner. Each is refused as
    ALERT_OWNER_NOT_ALLOWED (FAILED_PRECONDITION, which audit does not retry), nothing is sent, and an audit
    event says which check failed. The same owners' alerts went out before the change."""
    revoked = await new_owner(certs, identity_app)
    account, admin = revoked.account_id, revoked.admin
    stripped, disabled, healthy = [await new_owner(certs, identity_app, account, admin) for _ in range(3)]
    keys_port = int(keys_addr.rsplit(":", 1)[1])
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as gw, \
            channel_as(certs, "audit", messaging.api.port, "messaging") as ch, \
            channel_as(certs, "gateway", identity_app.port, "identity") as igw, \
            channel_as(certs, "ops", identity_app.port, "identity") as iops, \
            channel_as(certs, "gateway", keys_port, "keys") as kgw:
        stub = notification_service_pb2_grpc.NotificationServiceStub(ch)
        await verify(messaging, notification_service_pb2_grpc.NotificationServiceStub(gw), account, REAL_NUMBER)

        def alert(owner: Owner | None) -> npb.SendNotificationRequest:
            return npb.SendNotificationRequest(
                account_id=account, channel=SMS, to=REAL_NUMBER, body="SendSafe alert: x",
                notification_id=uuid.uuid4().hex, owner=owner.proto() if owner else None)

        async def alert_rows() -> list[Any]:
            return list(await messaging.pool.fetch(
                "SELECT user_id FROM messages WHERE account_id = $1 AND cause = 'alert_delivery'", account))

        for owner in (revoked, stripped, disabled, healthy):  # all allowed to begin with
            await stub.SendNotification(alert(owner))
        assert len(await alert_rows()) == 4

        # The key the rule was set with is revoked (by its user); sms access is withdrawn (by the main user);
        # the user is disabled (by staff).
        await keys_service_pb2_grpc.KeysServiceStub(kgw).RevokeApiKey(
            kpb.RevokeApiKeyRequest(key_id=revoked.key_id),
            metadata=_md(account_id=account, user_id=revoked.user_id, permissions=["api_keys.write"],
                         auth_method=principal_pb2.AUTH_METHOD_API_KEY, api_key_id=revoked.key_id))
        await identity_service_pb2_grpc.IdentityServiceStub(igw).UpdateSubaccount(
            ipb.UpdateSubaccountRequest(subaccount_id=stripped.user_id, access_sms=0), metadata=admin)
        staff_name = f"staff{uuid.uuid4().hex[:8]}"
        staff = (await staff_service_pb2_grpc.StaffServiceStub(iops).CreateStaffUser(
            staff_service_pb2.CreateStaffUserRequest(
                username=staff_name, email=f"{staff_name}@sendsafe.example", display_name="Agent",
                role=staff_service_pb2.STAFF_ROLE_SUPPORT_AGENT, password=PASSWORD))).staff_user
        as_staff = _md(user_id=staff.staff_id, api_username=staff_name, staff=True,
                       permissions=["staff.accounts.write"], auth_method=principal_pb2.AUTH_METHOD_SESSION,
                       session_id="s1", mfa_time=stepped_up_now())
        await staff_service_pb2_grpc.StaffServiceStub(igw).SetCustomerUserStatus(
            staff_service_pb2.SetCustomerUserStatusRequest(account_id=account, user_id=disabled.user_id, active=False,
                                                           reason="ticket 7: integration test"), metadata=as_staff)

        for owner in (revoked, stripped, disabled, None):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SendNotification(alert(owner))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, owner
            assert reason_of(info.value) == "ALERT_OWNER_NOT_ALLOWED", owner
        await stub.SendNotification(alert(healthy))  # the others' refusals are theirs alone
        assert [r["user_id"] for r in await alert_rows()].count(healthy.user_id) == 2
        assert len(await alert_rows()) == 5  # nothing sent (or charged) for the refused ones

    async with channel_as(certs, "gateway", audit_app.port, "audit") as ach:
        audit_stub = audit_service_pb2_grpc.AuditServiceStub(ach)

        async def refusals() -> list[event_pb2.Event]:
            got = await audit_stub.ListEvents(audit_service_pb2.ListEventsRequest(
                action="messaging.notification.refused"), metadata=principal_md(account, "audit.read"))
            return list(got.events) if len(got.events) == 4 else []

        events = await until(refusals, what="the refusals' audit events")
    assert {(e.resource.id, e.details["check"]) for e in events} == {
        (str(revoked.user_id), "api_key_inactive"), (str(stripped.user_id), "sms_send_missing"),
        (str(disabled.user_id), "user_inactive"), ("0", "no_owner")}
    assert all(e.cause == "alert_delivery" and e.error_reason == "ALERT_OWNER_NOT_ALLOWED" for e in events)


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
    messaging: Messaging, certs: CertBundle, new_database: NewDatabase, identity_app: App
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
    owner = await new_owner(certs, identity_app)
    account = owner.account_id
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
            md = principal_md(account, "audit.manage", "audit.read", "sms.send", user_id=owner.user_id,
                              api_username=owner.api_username, api_key_id=owner.key_id)
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
            assert alert_row["user_id"] == owner.user_id and alert_row["price"] > 0
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
